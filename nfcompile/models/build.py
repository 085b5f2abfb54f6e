"""Build models from the recipe's `model` section; save and restore multi-exit checkpoints.

Checkpoints hold only tensors and plain containers, so they load with ``weights_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from nfcompile.core.io import load_checkpoint
from nfcompile.core.log import get_logger
from nfcompile.errors import InputError, RecipeError
from nfcompile.models.adapters import UnitNet, get_adapter, unit_net_from_torchvision
from nfcompile.models.early_exit import MultiExitNet
from nfcompile.models.heads import AuxHead
from nfcompile.recipe.schema import ModelSection

log = get_logger(__name__)

CHECKPOINT_FORMAT = "nfcompile.multi_exit/1"


def build_unit_net(section: ModelSection, num_classes: int) -> UnitNet:
    """The recipe's architecture as units, with its initial weights. Seed torch before calling."""
    adapter = get_adapter(section.arch)
    classes = section.num_classes or num_classes
    pretrained = section.pretrained
    if pretrained and pretrained.startswith("torchvision:"):
        if section.width != 1.0:
            raise RecipeError("torchvision weights exist only for width 1.0", field="model.width")
        weights = adapter.weights(pretrained.split(":", 1)[1])
        model = adapter.build(len(weights.meta["categories"]), 1.0)
        model.load_state_dict(_fetch_torchvision_weights(weights))
        if classes != len(weights.meta["categories"]):
            adapter.replace_classifier(model, classes)
    else:
        model = adapter.build(classes, section.width)
    if section.small_input:
        adapter.small_input(model)
    net = unit_net_from_torchvision(model, section.arch)
    if pretrained and not pretrained.startswith("torchvision:"):
        load_weights_file(net, model, Path(pretrained))
    return net


def _fetch_torchvision_weights(weights: Any) -> dict[str, torch.Tensor]:
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True,
                                                  weights_only=True)
    except Exception as exc:  # URLError, HTTPError, hash mismatch...
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise InputError(f"model.pretrained: could not get torchvision weights {weights} ({exc})",
                         hint=f"without internet, put {Path(weights.url).name} at {cache} "
                         "or point model.pretrained at a local state_dict file") from None


_CLASSIFIER = ("classifier.", "fc.")  # state_dict prefixes of the classifier (UnitNet, torchvision)


def load_weights_file(net: UnitNet, model: nn.Module, path: Path) -> None:
    """Load a state_dict file into ``net``: an nfcompile checkpoint, a UnitNet state_dict, or the
    torchvision model's own state_dict. Units must match exactly; a classifier for another number of
    classes is left freshly initialized (fine-tuning to a new label set)."""
    state = load_checkpoint(path)
    if isinstance(state.get("net"), dict) and state["net"].get("format") == CHECKPOINT_FORMAT:
        state = state["net"]  # an nfcompile training checkpoint (checkpoint/checkpoint.pt of a run)
    if state.get("format") == CHECKPOINT_FORMAT:
        state = state["state_dict"]
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise InputError(f"{path}: not a state_dict: {len(not_tensors)} entr{'y' if len(not_tensors) == 1 else 'ies'} "
                         f"hold no tensor (first: {not_tensors[0]!r})",
                         hint="pass a file written by torch.save(model.state_dict()) or an nfcompile checkpoint")
    target: nn.Module = net if any(k.startswith("units.") for k in state) else model
    own = target.state_dict()
    # Another classifier may also have other layers: torchvision's VGG MLP has three, the
    # small-input VGG one, so the file's extra classifier layers are dropped, not fatal.
    unexpected = sorted(k for k in state if k not in own and not k.startswith(("heads.", *_CLASSIFIER)))
    missing = sorted(k for k in own if k not in state)
    mismatched = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    classifier_keys = {k for k in own if k.startswith(_CLASSIFIER)}
    fatal = [k for k in [*missing, *mismatched] if k not in classifier_keys] + unexpected
    if fatal:
        raise InputError(f"{path}: weights do not fit {net.arch} as configured "
                         f"({len(fatal)} parameter(s) missing, unexpected or of another shape, "
                         f"first: {fatal[0]})",
                         hint="check model.arch, model.width and model.small_input against the file")
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    target.load_state_dict(usable, strict=False)
    if [k for k in [*missing, *mismatched] if k in classifier_keys]:
        log.info("%s: classifier left freshly initialized (file has another number of classes)", path)


# --------------------------------------------------------------------------- multi-exit checkpoints


def head_specs(net: MultiExitNet) -> dict[str, dict[str, Any]]:
    specs = {}
    for key, head in net.heads.items():
        if head is net.classifier:
            specs[key] = {"kind": "classifier"}
        elif isinstance(head, AuxHead):
            specs[key] = {"kind": "aux", "filters": head.filters, "pool": head.pool_kernel, "depth": head.depth}
        else:
            raise TypeError(f"head {key} is a {type(head).__name__}: not one nfcompile can rebuild")
    return specs


def multi_exit_state(net: MultiExitNet, section: ModelSection, num_classes: int) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "model": json.loads(section.model_dump_json()),
        "num_classes": num_classes,
        "heads": head_specs(net),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }


def attach_heads(unit_net: UnitNet, specs: dict[str, dict[str, Any]], num_classes: int) -> MultiExitNet:
    shapes = unit_net.unit_shapes(_probe_input_shape(unit_net))
    heads: dict[int, nn.Module] = {}
    for key, spec in specs.items():
        unit = int(key)
        if spec["kind"] == "classifier":
            heads[unit] = unit_net.classifier
        else:
            # Checkpoints from before pooled and deeper heads hold only the filters.
            heads[unit] = AuxHead(shapes[unit][1][0], int(spec["filters"]), num_classes,
                                  pool=int(spec.get("pool", 1)), depth=int(spec.get("depth", 1)))
    return MultiExitNet(unit_net, heads)


def match_head_specs(net: MultiExitNet, specs: dict[str, dict[str, Any]]) -> None:
    """Give ``net`` the auxiliary heads ``specs`` (a checkpoint's `head_specs`) describes where its own
    differ (a resumed run whose finished blocks' exits ship slim heads), so their weights load."""
    for key, spec in specs.items():
        head = net.heads[key]
        if spec["kind"] != "aux" or not isinstance(head, AuxHead):
            continue
        wanted = (int(spec["filters"]), int(spec.get("pool", 1)), int(spec.get("depth", 1)))
        if wanted != (head.filters, head.pool_kernel, head.depth):
            net.heads[key] = AuxHead(head.in_channels, wanted[0], head.fc.out_features, pool=wanted[1],
                                     depth=wanted[2])


def _probe_input_shape(unit_net: UnitNet) -> tuple[int, int, int]:
    # Channel counts do not depend on the spatial size; 32x32 is valid for every adapter.
    return (3, 32, 32)


def multi_exit_from_state(state: dict[str, Any], section: ModelSection | None = None) -> MultiExitNet:
    """Rebuild a trained MultiExitNet from `multi_exit_state` output (weights_only-loaded)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"not an nfcompile multi-exit checkpoint (format {state.get('format')!r})")
    # The weights come from the checkpoint: `pretrained` is neither fetched nor read again, nor
    # required to exist still (the file the training started from may be long gone).
    if section is None:
        try:
            section = ModelSection.model_validate({**state["model"], "pretrained": None})
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise InputError(f"checkpoint's model section is not valid: model.{where}: {first['msg']}") from None
    unit_net = build_unit_net(section.model_copy(update={"pretrained": None}), int(state["num_classes"]))
    net = attach_heads(unit_net, state["heads"], int(state["num_classes"]))
    try:
        net.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"checkpoint does not match model {section.arch}: {str(exc).splitlines()[0]}") from None
    return net


def unit_shapes_for(unit_net: UnitNet, image_size: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Unit shapes at the recipe's input size; a size the architecture cannot take is a recipe error."""
    try:
        return unit_net.unit_shapes((3, image_size, image_size))
    except RuntimeError as exc:
        raise RecipeError(f"{image_size}x{image_size} inputs are too small for {unit_net.arch} "
                          f"({str(exc).splitlines()[0]})", field="data.image_size",
                          hint="use a larger data.image_size (32 suits every architecture with small_input)") from None
