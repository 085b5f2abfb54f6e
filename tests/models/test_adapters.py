"""Adapters, for every registered architecture: the units run in order, then the classifier, are
exactly the torchvision model; shapes chain; small-input stems and widths do what they say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nfcompile.errors import RecipeError
from nfcompile.models import get_adapter, list_adapters, unit_net_from_torchvision
from nfcompile.models.adapters import register_adapter

# Units per architecture: the stem plus every residual block (ResNet), every conv+BN+ReLU(+pool)
# (VGG), every entry of `features` (MobileNetV2), as the published models define them.
UNIT_COUNTS = {"resnet18": 9, "resnet34": 17, "resnet50": 17, "vgg11_bn": 8, "vgg16_bn": 13, "vgg19_bn": 16,
               "mobilenet_v2": 19}
STEM_CHANNELS = {"resnet": 64, "vgg": 64, "mobilenet": 32}  # at width 1.0
# Spatial reduction by the first unit: the small-input stem keeps full resolution (VGG's first
# unit has no stride either way; in VGG-11 it ends with a max-pool).
STEM_STRIDE = {("resnet", True): 1, ("resnet", False): 4, ("mobilenet", True): 1, ("mobilenet", False): 2}

# Small-input stem on and off, and a width multiplier (test_build covers width with small inputs).
CONFIGS = [pytest.param(True, 1.0, 32, id="small-input"), pytest.param(False, 0.5, 64, id="imagenet-stem-width-0.5")]


def test_the_issue_architectures_are_registered():
    assert set(UNIT_COUNTS) <= set(list_adapters())


@pytest.mark.parametrize("small_input, width, size", CONFIGS)
@pytest.mark.parametrize("arch", list_adapters())
def test_units_in_order_are_the_torchvision_model(arch, small_input, width, size, scramble):
    adapter = get_adapter(arch)
    torch.manual_seed(0)
    model = adapter.build(10, width)
    if small_input:
        adapter.small_input(model)
    model = scramble(model, seed=1).eval()
    net = unit_net_from_torchvision(model, arch)
    x = torch.randn((2, 3, size, size), generator=torch.Generator().manual_seed(2))
    shapes = net.unit_shapes((3, size, size))
    with torch.no_grad():
        expected = model(x)
        h = x
        for unit, (in_shape, out_shape) in zip(net.units, shapes, strict=True):
            assert tuple(h.shape[1:]) == in_shape
            h = unit(h)
            assert tuple(h.shape[1:]) == out_shape
        assert torch.equal(net.classifier(h), expected)
        assert torch.equal(net(x), expected)
    # The units share the model's modules: every parameter is in exactly one place.
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.parameters()}
    assert len(net.units) == UNIT_COUNTS.get(arch, len(net.units)) == len(net.unit_names)
    assert shapes[0][0] == (3, size, size)
    assert [out for _, out in shapes[:-1]] == [inp for inp, _ in shapes[1:]]
    family = adapter.family
    assert shapes[0][1][0] == STEM_CHANNELS[family] * width
    if (family, small_input) in STEM_STRIDE:
        assert shapes[0][1][1:] == (size // STEM_STRIDE[family, small_input],) * 2
    if family == "vgg":  # small inputs: global pool and one linear layer instead of the 4096-wide MLP
        linears = [m for m in net.classifier.modules() if isinstance(m, nn.Linear)]
        assert len(linears) == (1 if small_input else 3) and linears[-1].out_features == 10


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(RecipeError) as info:
        get_adapter("resnet19")
    assert info.value.field == "model.arch" and "resnet18" in str(info.value) and "vgg16_bn" in str(info.value)


def test_registering_an_architecture_twice_fails():
    with pytest.raises(ValueError, match="registered twice"):
        register_adapter(get_adapter("resnet18"))


@pytest.mark.parametrize("arch", list_adapters())
def test_weight_enum_lookup(arch):
    lookup = get_adapter(arch).weights
    default = lookup("DEFAULT")
    assert default.url.endswith(".pth") and len(default.meta["categories"]) == 1000
    assert lookup("IMAGENET1K_V1").url.endswith(".pth")
    with pytest.raises(RecipeError) as info:
        lookup("IMAGENET_V9")
    message = str(info.value)
    assert info.value.field == "model.pretrained" and "'IMAGENET_V9'" in message
    assert "DEFAULT" in message and "IMAGENET1K_V1" in message
