"""Score every trained exit, and the full model, for selection.

For each exit (units[0..k] + head k): top-1 accuracy on the test split, parameters, MACs, the
size and sha256 of its ONNX (written to `out_dir/exits/exit_KK.onnx`), and latency on the
recipe's bench backend, or from a latency table timed on the target (`bench.table`).
Accuracy, parameters, MACs and ONNX bytes are deterministic; latency is a measurement.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from nfcompile.core.io import sha256_file
from nfcompile.core.log import get_logger
from nfcompile.core.results import ExitScore, ExitScores
from nfcompile.data.datasets import ImageSet
from nfcompile.data.preprocess import Preprocessing
from nfcompile.errors import InputError
from nfcompile.models.early_exit import ExitNet, MultiExitNet
from nfcompile.recipe.schema import BenchSection, ExportSection, TensorRTSection
from nfcompile.runtime.backends import get_backend
from nfcompile.runtime.onnx_io import export_onnx
from nfcompile.stages.score.accuracy import exits_top1
from nfcompile.stages.score.cost import count_macs, count_params
from nfcompile.stages.score.latency_table import LatencyTable, read_latency_table
from nfcompile.stages.score.timing import check_backend, time_onnx

log = get_logger(__name__)

EXITS_DIR = "exits"  # under the run folder: one ONNX per scored exit (what --emit-table times)
FULL_MODEL = "full"


def exit_name(unit: int) -> str:
    return f"exit_{unit:02d}"


def score_exits(net: MultiExitNet, exit_units: Sequence[int], test: ImageSet, preprocessing: Preprocessing, *,
                bench: BenchSection, export: ExportSection, out_dir: Path, device: torch.device,
                tensorrt: TensorRTSection | None = None) -> ExitScores:
    """Score the exits at ``exit_units`` (the trained ones) and the full model (all units + last head).

    The full model's accuracy is None when its last unit was not trained. ONNX files go to
    ``out_dir/exits/``; with ``bench.backend: tensorrt`` their engines too, built with the recipe's
    ``tensorrt`` section. ``net`` keeps its device and mode.
    """
    units = sorted(set(int(u) for u in exit_units))
    last = len(net.units) - 1
    unknown = [u for u in [*units, last] if u not in net.exit_units]
    if not units or unknown:
        raise ValueError(f"exit units {units} (and the last unit {last}) must carry heads; "
                         f"the net has heads at {net.exit_units}")
    table = _table_for(bench)
    if table is None:
        check_backend(bench.backend)  # fail before minutes of exporting, not after
        if get_backend(bench.backend).needs_engine and tensorrt is None:
            raise ValueError(f"bench.backend {bench.backend}: pass the recipe's tensorrt section")
    input_shape = (3, preprocessing.image_size, preprocessing.image_size)
    accuracies = exits_top1(net, units, test, preprocessing, device=device)
    scorer = _ExitScorer(Path(out_dir), input_shape, bench, export, tensorrt, table)
    was_training, home = net.training, next(net.parameters()).device
    try:  # exporting moves the shared modules to the CPU in eval mode
        exits = tuple(scorer.score(net.exit_net(u), exit_name(u), u, accuracies[u]) for u in units)
        if units[-1] == last:
            # The last exit is the full model: the same network, file and numbers.
            full = dataclasses.replace(exits[-1], name=FULL_MODEL)
        else:
            full = scorer.score(net.exit_net(last), FULL_MODEL, last, None)
    finally:
        net.train(was_training).to(home)
    return ExitScores(exits=exits, full_model=full, backend=bench.backend, test_samples=len(test),
                      batch_sizes=tuple(bench.batch_sizes))


def _table_for(bench: BenchSection) -> LatencyTable | None:
    if bench.table is None:
        return None
    table = read_latency_table(bench.table)
    if table.backend != bench.backend:
        raise InputError(f"latency table {bench.table} was timed on {table.backend}, "
                         f"but bench.backend is {bench.backend}",
                         hint=f"set bench.backend: {table.backend}, or emit a table with --backend {bench.backend}")
    return table


@dataclasses.dataclass(frozen=True)
class _ExitScorer:
    out_dir: Path
    input_shape: tuple[int, ...]
    bench: BenchSection
    export: ExportSection
    tensorrt: TensorRTSection | None
    table: LatencyTable | None

    def score(self, module: ExitNet, name: str, unit: int, accuracy: float | None) -> ExitScore:
        relative = Path(EXITS_DIR) / f"{name}.onnx"
        onnx_path = self.out_dir / relative
        # Always a dynamic batch: exits are timed at several batch sizes. The export stage decides
        # the deliverable's own batch dimension.
        onnx_file = export_onnx(module, onnx_path, input_shape=self.input_shape, exporter=self.export.exporter,
                                opset=self.export.opset, dynamic_batch=True,
                                metadata={"nfcompile.exit": name, "nfcompile.unit": str(unit)})
        sha256 = sha256_file(onnx_path)
        params = count_params(module)
        macs = count_macs(module, self.input_shape)
        if self.table is not None:
            latency = self.table.latency_for(name, sha256, self.bench.batch_sizes, path=self.bench.table)
            source = self.table.describe(self.bench.table)
        else:
            timing = time_onnx(onnx_path, self.input_shape, self.bench, tensorrt=self.tensorrt,
                               engine_dir=self.out_dir / EXITS_DIR)
            latency, source = timing.latency, timing.source
        accuracy_text = "not trained" if accuracy is None else f"{accuracy:.2%}"
        log.info("%s (unit %d): accuracy %s, %d params, %d MACs, ONNX %d bytes, p50 %s", name, unit,
                 accuracy_text, params, macs, onnx_file.bytes,
                 ", ".join(f"{lat.p50_ms:.3f} ms at batch {lat.batch_size}" for lat in latency))
        return ExitScore(name=name, unit=unit, accuracy=accuracy, params=params, macs=macs,
                         onnx_bytes=onnx_file.bytes, onnx_sha256=sha256, latency=latency,
                         latency_source=source, onnx_file=relative.as_posix())
