"""The prune stage on a trained multi-exit net: prune one exit, keep it as a checkpoint, size it.

`prune_chosen_exit` prunes a copy of the chosen exit (``prune.target: chosen_exit``) or of the
full model, the last unit with its classifier (``full_model``), writes the pruned weights to
``out_dir`` and measures how much smaller the exported ONNX becomes when deflated.
`pruned_exit_from_checkpoint` gives that pruned exit back to the export stage.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path

import torch
from torch import nn

from nfcompile.core.io import load_checkpoint, save_checkpoint
from nfcompile.core.results import PruneResult
from nfcompile.data.datasets import DataBundle
from nfcompile.errors import InputError
from nfcompile.models.early_exit import MultiExitNet
from nfcompile.recipe.schema import ExportSection, PruneSection, TrainSection
from nfcompile.runtime.onnx_io import export_onnx
from nfcompile.stages.prune.prune import compressed_size, prune_model

CHECKPOINT_FORMAT = "nfcompile.pruned_exit/1"
CHECKPOINT_FILE = "pruned_exit.pt"


def pruned_unit(net: MultiExitNet, chosen_unit: int, target: str) -> int:
    """The unit whose exit gets pruned: the chosen one, or the last (the full model)."""
    return chosen_unit if target == "chosen_exit" else net.exit_units[-1]


def _deflated_onnx_bytes(model: nn.Module, folder: Path, input_shape: tuple[int, int, int],
                         export: ExportSection) -> int:
    with tempfile.TemporaryDirectory(dir=folder, prefix=".size-") as tmp:
        exported = export_onnx(model, Path(tmp) / "model.onnx", input_shape=input_shape, exporter=export.exporter,
                               opset=export.opset, dynamic_batch=export.dynamic_batch)
        return compressed_size(exported.path)


def prune_chosen_exit(net: MultiExitNet, unit: int, data: DataBundle, section: PruneSection, train: TrainSection, *,
                      device: torch.device, seed: int, out_dir: Path, export: ExportSection) -> PruneResult:
    """Prune a copy of one exit of ``net`` (``net`` itself is untouched) with ``section.method`` and
    its baselines; write the pruned exit to ``out_dir``/`CHECKPOINT_FILE`.

    ``compressed_bytes`` and ``dense_compressed_bytes`` are the deflated sizes of the exit exported
    with the recipe's exporter after and before pruning (the export stage may still simplify it).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target_unit = pruned_unit(net, unit, section.target)
    exit_net = copy.deepcopy(net.exit_net(target_unit))
    size = data.preprocessing.image_size
    dense_bytes = _deflated_onnx_bytes(exit_net, out_dir, (3, size, size), export)
    pruned, result = prune_model(exit_net, data, section, train, device=device, seed=seed)
    pruned = pruned.eval().cpu()
    save_checkpoint(out_dir / CHECKPOINT_FILE, {
        "format": CHECKPOINT_FORMAT, "unit": target_unit, "target": section.target,
        "state_dict": {k: v.detach().cpu() for k, v in pruned.state_dict().items()}})
    return dataclasses.replace(result, checkpoint=CHECKPOINT_FILE,
                               compressed_bytes=_deflated_onnx_bytes(pruned, out_dir, (3, size, size), export),
                               dense_compressed_bytes=dense_bytes)


def pruned_exit_from_checkpoint(path: str | Path, net: MultiExitNet, unit: int) -> nn.Module:
    """The pruned exit written by `prune_chosen_exit`, rebuilt on a copy of ``net``'s exit (eval mode).

    ``unit`` is the chosen exit; a checkpoint of another exit of a ``chosen_exit`` run is stale.
    """
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a pruned-exit checkpoint (format {state.get('format')!r})")
    if state["target"] == "chosen_exit" and int(state["unit"]) != unit:
        raise InputError(f"{path}: holds the pruned exit at unit {state['unit']}, but the chosen exit is at "
                         f"unit {unit}", hint="rebuild without --resume, or rerun the prune stage")
    exit_net = copy.deepcopy(net.exit_net(int(state["unit"])))
    try:
        exit_net.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{path}: does not fit the trained exit ({str(exc).splitlines()[0]})") from None
    return exit_net.eval()
