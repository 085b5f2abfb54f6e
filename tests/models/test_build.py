"""Building from the recipe: pretrained weights from local files (torchvision's keys or ours),
torchvision weight enums without downloading, and multi-exit checkpoints that round-trip."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from nfcompile.core.io import load_checkpoint, save_checkpoint
from nfcompile.errors import InputError, RecipeError
from nfcompile.models import (attach_heads, build_unit_net, get_adapter, list_adapters, multi_exit_from_state,
                              multi_exit_state, unit_net_from_torchvision)
from nfcompile.recipe.schema import ModelSection


def _input(size: int) -> torch.Tensor:
    return torch.randn((2, 3, size, size), generator=torch.Generator().manual_seed(7))


def _build(seed: int, **model) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_unit_net(ModelSection(**model), 10).eval()


@pytest.mark.parametrize("arch", list_adapters())
def test_pretrained_state_dict_files(tmp_path, arch, scramble):
    adapter = get_adapter(arch)
    torch.manual_seed(1)
    source = adapter.build(10, 1.0)
    adapter.small_input(source)
    source = scramble(source, seed=2).eval()
    source_units = unit_net_from_torchvision(source, arch)
    x = _input(32)
    with torch.no_grad():
        expected = source(x)
    # torchvision's keys (conv1.weight, features.0.weight, ...) and ours (units.0..., classifier...).
    files = {"torchvision": source.state_dict(), "unit_net": source_units.state_dict()}
    assert not files["torchvision"].keys() & files["unit_net"].keys()
    for seed, (style, state) in enumerate(files.items(), start=3):
        path = tmp_path / f"{style}.pt"
        torch.save(state, path)
        loaded = _build(seed, arch=arch, small_input=True, pretrained=str(path))
        with torch.no_grad():
            assert torch.equal(loaded(x), expected), style


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_weights_saved_by_torchvision_itself(tmp_path, arch, scramble):
    torch.manual_seed(1)
    reference = scramble(getattr(tvm, arch)(num_classes=10), seed=2).eval()
    path = tmp_path / f"{arch}.pt"
    torch.save(reference.state_dict(), path)
    net = _build(3, arch=arch, small_input=False, pretrained=str(path))
    x = _input(64)
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))


def test_torchvision_vgg_features_load_into_the_small_input_vgg(tmp_path, scramble):
    torch.manual_seed(1)
    reference = scramble(tvm.vgg11_bn(num_classes=1000), seed=2).eval()
    path = tmp_path / "vgg11_bn.pt"
    torch.save(reference.state_dict(), path)
    # The small-input VGG has another classifier (one linear layer): the features load, the
    # classifier starts fresh, as for a file with another number of classes.
    net = _build(3, arch="vgg11_bn", small_input=True, pretrained=str(path))
    x = _input(32)
    with torch.no_grad():
        assert torch.equal(net.forward_features(x), reference.features(x))


def test_weights_of_another_shape_are_refused(tmp_path):
    path = tmp_path / "resnet18.pt"
    torch.save(tvm.resnet18(num_classes=10).state_dict(), path)  # a 7x7 stem
    with pytest.raises(InputError) as info:
        _build(0, arch="resnet18", small_input=True, pretrained=str(path))
    assert str(path) in str(info.value) and "conv1.weight" in str(info.value)
    assert "model.small_input" in info.value.hint


def test_crafted_pickle_weights_are_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "weights.pt"
    path.write_bytes(b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR.")  # os.system("touch ...")
    with pytest.raises(InputError) as info:
        _build(0, arch="resnet18", pretrained=str(path))
    assert str(path) in str(info.value) and "refused" in str(info.value)
    assert not marker.exists()


def test_torchvision_weight_names_are_checked_before_any_download():
    with pytest.raises(RecipeError) as info:
        _build(0, arch="resnet18", pretrained="torchvision:IMAGENET_V9")
    assert info.value.field == "model.pretrained" and "IMAGENET1K_V1" in str(info.value)
    with pytest.raises(RecipeError) as info:
        _build(0, arch="resnet18", width=0.5, pretrained="torchvision:DEFAULT")
    assert info.value.field == "model.width"


def test_torchvision_weights_offline_say_where_to_put_the_file():
    with pytest.raises(InputError) as info:
        _build(0, arch="resnet18", pretrained="torchvision:DEFAULT")
    file_name = tvm.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1]
    assert file_name in info.value.hint and str(torch.hub.get_dir()) in info.value.hint


# --------------------------------------------------------------------------- multi-exit checkpoints


def _trained_multi_exit(model: ModelSection, scramble):
    torch.manual_seed(0)
    unit_net = build_unit_net(model, 10)
    last = len(unit_net.units) - 1
    specs = {"0": {"kind": "aux", "filters": 8}, "2": {"kind": "aux", "filters": 16},
             str(last): {"kind": "classifier"}}
    net = scramble(attach_heads(unit_net, specs, 10), seed=5).eval()
    return net, specs


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_multi_exit_checkpoint_round_trip(tmp_path, arch, scramble):
    model = ModelSection(arch=arch, width=0.25)
    net, specs = _trained_multi_exit(model, scramble)
    path = save_checkpoint(tmp_path / "multi_exit.pt", multi_exit_state(net, model, 10))
    torch.manual_seed(99)  # a fresh build would differ: only the checkpoint can make them equal
    restored = multi_exit_from_state(load_checkpoint(path)).eval()
    assert restored.exit_units == net.exit_units == sorted(int(k) for k in specs)
    x = _input(32)
    with torch.no_grad():
        expected = net.forward_exits(x)
        actual = restored.forward_exits(x)
        assert expected.keys() == actual.keys()
        for unit in expected:
            assert torch.equal(actual[unit], expected[unit])
            assert torch.equal(restored.exit_net(unit)(x), expected[unit])
    assert restored.heads[str(net.exit_units[-1])] is restored.classifier


def test_multi_exit_checkpoint_outlives_its_pretrained_file(tmp_path, scramble):
    weights = tmp_path / "start.pt"
    torch.save(_build(0, arch="resnet18", width=0.25).state_dict(), weights)
    model = ModelSection(arch="resnet18", width=0.25, pretrained=str(weights))
    net, _ = _trained_multi_exit(model, scramble)
    state = multi_exit_state(net, model, 10)
    weights.unlink()  # the file training started from is gone; the checkpoint holds every weight
    restored = multi_exit_from_state(state).eval()
    x = _input(32)
    with torch.no_grad():
        assert torch.equal(restored(x), net(x))


def test_multi_exit_checkpoint_as_pretrained_weights(tmp_path, scramble):
    model = ModelSection(arch="resnet18", width=0.25)
    net, _ = _trained_multi_exit(model, scramble)
    path = save_checkpoint(tmp_path / "multi_exit.pt", multi_exit_state(net, model, 10))
    unit_net = _build(1, arch="resnet18", width=0.25, pretrained=str(path))
    x = _input(32)
    with torch.no_grad():  # the last exit is the model's own classifier
        assert torch.equal(unit_net(x), net.forward_exits(x)[len(net.units) - 1])


def test_not_a_multi_exit_checkpoint():
    with pytest.raises(InputError, match="not an nfcompile multi-exit checkpoint"):
        multi_exit_from_state({"format": "something/else"})
