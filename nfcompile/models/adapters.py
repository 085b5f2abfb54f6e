"""Adapters: a torchvision model becomes an ordered list of units plus its own classifier.

A unit is the smallest piece NeuroFlux trains with its own local loss: the stem, one residual
block (ResNet), one conv+BN+ReLU(+pool) (VGG), one inverted-residual block (MobileNetV2).
Running the units in order and then the classifier is exactly the torchvision forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm

from nfcompile.core.registry import Registry
from nfcompile.errors import RecipeError


class UnitNet(nn.Module):
    """units[0] -> ... -> units[-1] -> classifier, the same function as the source model."""

    def __init__(self, units: list[tuple[str, nn.Module]], classifier: nn.Module, arch: str):
        super().__init__()
        self.arch = arch
        self.unit_names = [name for name, _ in units]
        self.units = nn.ModuleList(module for _, module in units)
        self.classifier = classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    @torch.no_grad()
    def unit_shapes(self, input_shape: tuple[int, int, int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Per-sample (in_shape, out_shape) of every unit, from one eval-mode pass."""
        # Each module gets its own mode back: the units may be shared with an eval-mode model
        # while this wrapper still says training, and `self.train(...)` would flip them all.
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            device = next(self.parameters()).device
            x = torch.zeros((1, *input_shape), device=device)
            shapes = []
            for unit in self.units:
                y = unit(x)
                shapes.append((tuple(x.shape[1:]), tuple(y.shape[1:])))
                x = y
        finally:
            for module, training in modes:
                module.training = training
        return shapes


@dataclass(frozen=True)
class Adapter:
    name: str
    family: str
    build: Callable[[int, float], nn.Module]  # (num_classes, width) -> torchvision model
    small_input: Callable[[nn.Module], None]  # adapts the model in place for ~32x32 inputs
    split: Callable[[nn.Module], tuple[list[tuple[str, nn.Module]], nn.Module]]
    replace_classifier: Callable[[nn.Module, int], None]  # new last layer for num_classes
    weights: Callable[[str], object]  # torchvision weight enum lookup


_ADAPTERS: Registry[Adapter] = Registry("architecture", unknown=lambda name, known: RecipeError(
    f"unknown architecture {name!r}; choose one of {', '.join(sorted(known))}", field="model.arch"))


def register_adapter(adapter: Adapter) -> Adapter:
    return _ADAPTERS.register(adapter.name, adapter)


def list_adapters() -> list[str]:
    return sorted(_ADAPTERS.names())


def get_adapter(arch: str) -> Adapter:
    return _ADAPTERS.get(arch)


def unit_net_from_torchvision(model: nn.Module, arch: str) -> UnitNet:
    """Split an existing torchvision model (sharing its modules, not copying them)."""
    units, classifier = get_adapter(arch).split(model)
    return UnitNet(units, classifier, arch)


def _scaled(channels: int, width: float, divisor: int = 8) -> int:
    return max(divisor, int(round(channels * width / divisor)) * divisor)


# --------------------------------------------------------------------------- ResNet


def _init_like_torchvision_resnet(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def _resnet_builder(factory: Callable[..., tvm.ResNet]) -> Callable[[int, float], nn.Module]:
    def build(num_classes: int, width: float) -> nn.Module:
        model = factory(num_classes=num_classes)
        if width == 1.0:
            return model
        # torchvision fixes the widths at 64..512; rebuild the stages through its own _make_layer.
        block = type(model.layer1[0])
        depths = [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)]
        widths = [_scaled(64 * 2**i, width) for i in range(4)]
        model.inplanes = widths[0]
        model.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        model.bn1 = nn.BatchNorm2d(widths[0])
        model.layer1 = model._make_layer(block, widths[0], depths[0])
        model.layer2 = model._make_layer(block, widths[1], depths[1], stride=2)
        model.layer3 = model._make_layer(block, widths[2], depths[2], stride=2)
        model.layer4 = model._make_layer(block, widths[3], depths[3], stride=2)
        model.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        _init_like_torchvision_resnet(model)
        return model
    return build


def _resnet_small_input(model: nn.Module) -> None:
    out_channels = model.conv1.out_channels
    model.conv1 = nn.Conv2d(3, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


def _resnet_split(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], nn.Module]:
    units: list[tuple[str, nn.Module]] = [
        ("stem", nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool))]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, stage)):
            units.append((f"{stage}.{i}", block))
    return units, nn.Sequential(model.avgpool, nn.Flatten(1), model.fc)


def _resnet_replace_classifier(model: nn.Module, num_classes: int) -> None:
    model.fc = nn.Linear(model.fc.in_features, num_classes)


# --------------------------------------------------------------------------- VGG


_VGG_CFG = {"vgg11_bn": "A", "vgg16_bn": "D", "vgg19_bn": "E"}


def _vgg_builder(arch: str) -> Callable[[int, float], nn.Module]:
    def build(num_classes: int, width: float) -> nn.Module:
        from torchvision.models.vgg import cfgs, make_layers

        cfg = [c if c == "M" else _scaled(c, width) for c in cfgs[_VGG_CFG[arch]]]
        model = tvm.VGG(make_layers(cfg, batch_norm=True), num_classes=num_classes)
        if width != 1.0:  # the first classifier layer reads last_channels x 7 x 7
            last = [c for c in cfg if c != "M"][-1]
            model.classifier[0] = nn.Linear(last * 7 * 7, 4096)
            nn.init.normal_(model.classifier[0].weight, 0, 0.01)
            nn.init.constant_(model.classifier[0].bias, 0)
        return model
    return build


def _vgg_small_input(model: nn.Module) -> None:
    # On 32x32 inputs the features end at 1x1; torchvision would tile that to 7x7 and feed a
    # 25088->4096 MLP (100M+ parameters). The CIFAR form pools to 1x1 and uses one linear layer.
    last = [m for m in model.features if isinstance(m, nn.Conv2d)][-1].out_channels
    num_classes = model.classifier[-1].out_features
    model.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    model.classifier = nn.Sequential(nn.Linear(last, num_classes))


def _vgg_split(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], nn.Module]:
    units: list[tuple[str, nn.Module]] = []
    current: list[nn.Module] = []
    start = 0
    for index, module in enumerate(model.features):
        if isinstance(module, nn.Conv2d) and current:
            units.append((f"features.{start}", nn.Sequential(*current)))
            current = []
        if isinstance(module, nn.Conv2d):
            start = index
        current.append(module)
    units.append((f"features.{start}", nn.Sequential(*current)))
    return units, nn.Sequential(model.avgpool, nn.Flatten(1), model.classifier)


def _vgg_replace_classifier(model: nn.Module, num_classes: int) -> None:
    model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)


# --------------------------------------------------------------------------- MobileNetV2


def _mobilenet_build(num_classes: int, width: float) -> nn.Module:
    return tvm.mobilenet_v2(num_classes=num_classes, width_mult=width)


def _mobilenet_small_input(model: nn.Module) -> None:
    # Output stride 32 leaves 1x1 maps on 32x32 inputs; the usual CIFAR form keeps the stem and the
    # second stage at stride 1 (output stride 8, 4x4 maps before pooling).
    model.features[0][0].stride = (1, 1)
    model.features[2].conv[1][0].stride = (1, 1)


def _mobilenet_split(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], nn.Module]:
    units = [(f"features.{i}", module) for i, module in enumerate(model.features)]
    return units, nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(1), model.classifier)


def _mobilenet_replace_classifier(model: nn.Module, num_classes: int) -> None:
    model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)


# --------------------------------------------------------------------------- registry


def _weights_lookup(builder_name: str) -> Callable[[str], object]:
    def lookup(name: str) -> object:
        try:
            enum = tvm.get_model_weights(builder_name)
        except ValueError as exc:
            raise RecipeError(str(exc), field="model.pretrained") from None
        try:
            return enum[name] if name != "DEFAULT" else enum.DEFAULT
        except KeyError:
            choices = ", ".join(["DEFAULT", *(w.name for w in enum)])
            raise RecipeError(f"no torchvision weights {name!r} for {builder_name}; choose one of {choices}",
                              field="model.pretrained") from None
    return lookup


for _name, _factory in (("resnet18", tvm.resnet18), ("resnet34", tvm.resnet34), ("resnet50", tvm.resnet50)):
    register_adapter(Adapter(_name, "resnet", _resnet_builder(_factory), _resnet_small_input, _resnet_split,
                             _resnet_replace_classifier, _weights_lookup(_name)))
for _name in _VGG_CFG:
    register_adapter(Adapter(_name, "vgg", _vgg_builder(_name), _vgg_small_input, _vgg_split,
                             _vgg_replace_classifier, _weights_lookup(_name)))
register_adapter(Adapter("mobilenet_v2", "mobilenet", _mobilenet_build, _mobilenet_small_input,
                         _mobilenet_split, _mobilenet_replace_classifier, _weights_lookup("mobilenet_v2")))
