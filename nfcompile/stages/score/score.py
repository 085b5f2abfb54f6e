"""Score every trained exit, and the full model, for selection.

For each exit (units[0..k] + head k): top-1 accuracy on the validation split (what selection decides
on) and on the test split (what the report gives, never used to choose), parameters, MACs, the size
and sha256 of its onnxsim-simplified ONNX (written to `out_dir/exits/exit_KK.onnx`), and latency of
that graph on the recipe's bench backend, all exits timed together in interleaved rounds, or from a
latency table timed on the target (`bench.table`). The machine's load is recorded beside them.
Accuracy, parameters, MACs and ONNX bytes are deterministic; latency is a measurement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path
from typing import Callable, Sequence

import torch

from nfcompile.core.io import atomic_path, sha256_file
from nfcompile.core.log import get_logger
from nfcompile.core.results import ExitScore, ExitScores
from nfcompile.data.datasets import ImageSet
from nfcompile.data.preprocess import Preprocessing
from nfcompile.errors import InputError
from nfcompile.models.early_exit import ExitNet, MultiExitNet
from nfcompile.recipe.schema import BenchSection, ExportSection, TensorRTSection
from nfcompile.runtime.backends import get_backend
from nfcompile.runtime.latency import machine_load
from nfcompile.runtime.onnx_io import OnnxExportError, export_onnx, set_metadata
from nfcompile.stages.score.accuracy import exits_hits, right_where_wrong, share_right
from nfcompile.stages.score.cost import count_macs, count_params
from nfcompile.stages.score.latency_table import LatencyTable, read_latency_table
from nfcompile.stages.score.timing import check_backend, time_onnx_files

log = get_logger(__name__)

EXITS_DIR = "exits"  # under the run folder: one ONNX per scored exit (what --emit-table times)
FULL_MODEL = "full"
SCORING_EXPORTER = "torchscript"  # scoring-only graphs: see `scoring_graph`


def exit_name(unit: int) -> str:
    return f"exit_{unit:02d}"


Quantizer = Callable[[Path, Path], Path]  # (FP32 ONNX, folder) -> the INT8 QDQ ONNX it wrote there


def score_exits(net: MultiExitNet, exit_units: Sequence[int], val: ImageSet, preprocessing: Preprocessing, *,
                bench: BenchSection, export: ExportSection, out_dir: Path, device: torch.device,
                tensorrt: TensorRTSection | None = None, test: ImageSet | None = None,
                quantizer: Quantizer | None = None) -> ExitScores:
    """Score the exits at ``exit_units`` (the trained ones) and the full model (all units + last head).

    ``val`` is the split selection decides on (`ExitScore.accuracy`); ``test``, the untouched split
    whose accuracy the report gives (`ExitScore.test_accuracy`). The full model's accuracies are None
    when its last unit was not trained. Each exit's graph is exported, simplified with onnxsim (as the
    deliverable is) and written to ``out_dir/exits/``; all of them are then timed together in
    interleaved rounds. With ``quantizer`` every exit's INT8 QDQ graph is made and timed too (for
    `select.latency_format: int8`). With ``bench.backend: tensorrt`` engines are built with the
    recipe's ``tensorrt`` section. ``net`` keeps its device and mode.
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
    val_hits = exits_hits(net, units, val, preprocessing, device=device)
    accuracies = {unit: share_right(hits) for unit, hits in val_hits.items()}
    test_hits = exits_hits(net, units, test, preprocessing, device=device) if test is not None else {}
    test_accuracies = {unit: share_right(hits) for unit, hits in test_hits.items()}
    scorer = _ExitScorer(Path(out_dir), input_shape, export, quantizer)
    was_training, home = net.training, next(net.parameters()).device
    try:  # exporting moves the shared modules to the CPU in eval mode
        graphs = [scorer.graph(net.exit_net(u), exit_name(u), u) for u in units]
        if units[-1] != last:
            graphs.append(scorer.graph(net.exit_net(last), FULL_MODEL, last))
    finally:
        net.train(was_training).to(home)
    load = machine_load()
    if load.loaded:
        log.warning("timing exits on a loaded machine (%s): latencies carry that noise", load.describe())
    latency, int8_latency, source, how = _latencies(graphs, Path(out_dir), input_shape, bench, tensorrt, table)
    exits = []
    for graph in graphs:
        unit = graph.unit
        score = ExitScore(name=graph.name, unit=unit, accuracy=accuracies.get(unit) if graph.name != FULL_MODEL else None,
                          params=graph.params, macs=graph.macs, onnx_bytes=graph.onnx_bytes,
                          onnx_sha256=graph.sha256, latency=latency[graph.name], latency_source=source,
                          onnx_file=graph.onnx_file,
                          test_accuracy=test_accuracies.get(unit) if graph.name != FULL_MODEL else None,
                          int8_latency=int8_latency.get(graph.name, ()), int8_file=graph.int8_file)
        _log_score(score)
        exits.append(score)
    if units[-1] == last:
        # The last exit is the full model: the same network, file and numbers.
        full = dataclasses.replace(exits[-1], name=FULL_MODEL)
    else:
        full = exits.pop()
    return ExitScores(exits=tuple(exits), full_model=full, backend=bench.backend,
                      test_samples=len(test) if test is not None else 0, batch_sizes=tuple(bench.batch_sizes),
                      val_samples=len(val), load=load, timing=how,
                      val_right_where_wrong=right_where_wrong([val_hits[unit] for unit in units]))


def _log_score(score: ExitScore) -> None:
    accuracy = "not trained" if score.accuracy is None else f"val {score.accuracy:.2%}"
    if score.test_accuracy is not None:
        accuracy += f", test {score.test_accuracy:.2%}"
    log.info("%s (unit %d): accuracy %s, %d params, %d MACs, ONNX %d bytes, p50 %s", score.name, score.unit,
             accuracy, score.params, score.macs, score.onnx_bytes,
             ", ".join(f"{lat.p50_ms:.3f} ms at batch {lat.batch_size}" for lat in score.latency))


def _latencies(graphs: Sequence["_ExitGraph"], out_dir: Path, input_shape: tuple[int, ...], bench: BenchSection,
               tensorrt: TensorRTSection | None, table: LatencyTable | None):
    """FP32 (and INT8) latencies by exit name, where they come from, and how they were timed."""
    if table is not None:
        latency = {g.name: table.latency_for(g.name, g.sha256, bench.batch_sizes, path=bench.table) for g in graphs}
        return latency, {}, table.describe(bench.table), f"from the latency table {bench.table}"
    files = {g.name: out_dir / g.onnx_file for g in graphs}
    files.update({f"{g.name}.int8": out_dir / g.int8_file for g in graphs if g.int8_file})
    timings = time_onnx_files(files, input_shape, bench, tensorrt=tensorrt, engine_dir=out_dir / EXITS_DIR)
    first = timings[graphs[0].name]
    how = first.source.split(", ", 1)[-1]
    latency = {g.name: timings[g.name].latency for g in graphs}
    int8 = {g.name: timings[f"{g.name}.int8"].latency for g in graphs if g.int8_file}
    return latency, int8, first.source, how


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
class _ExitGraph:
    name: str
    unit: int
    params: int
    macs: int
    onnx_file: str  # relative to the run folder
    onnx_bytes: int
    sha256: str
    int8_file: str = ""


@dataclasses.dataclass(frozen=True)
class _ExitScorer:
    out_dir: Path
    input_shape: tuple[int, ...]
    export: ExportSection
    quantizer: Quantizer | None

    def graph(self, module: ExitNet, name: str, unit: int) -> _ExitGraph:
        relative = Path(EXITS_DIR) / f"{name}.onnx"
        onnx_path = self.out_dir / relative
        # Always a dynamic batch: exits are timed at several batch sizes. The export stage decides
        # the deliverable's own batch dimension.
        scoring_graph(module, onnx_path, input_shape=self.input_shape, export=self.export,
                      metadata={"nfcompile.exit": name, "nfcompile.unit": str(unit)})
        int8_file = ""
        if self.quantizer is not None:
            folder = self.out_dir / EXITS_DIR / f"{name}.int8"
            folder.mkdir(parents=True, exist_ok=True)
            int8_file = self.quantizer(onnx_path, folder).relative_to(self.out_dir).as_posix()
        return _ExitGraph(name, unit, count_params(module), count_macs(module, self.input_shape),
                          relative.as_posix(), onnx_path.stat().st_size, sha256_file(onnx_path), int8_file)


def scoring_graph(module: ExitNet, path: Path, *, input_shape: tuple[int, ...], export: ExportSection,
                  metadata: dict[str, str]) -> Path:
    """The graph an exit would ship as, cheaply: TorchScript export, then onnxsim, as the export stage does.

    The TorchScript exporter takes a fraction of the dynamo exporter's time; after onnxsim both give
    the same operators for these CNNs, and ORT times the simplified graph the deliverable becomes.
    The deliverable itself is still exported, simplified and validated with the recipe's exporter.
    Where TorchScript refuses the module, the recipe's exporter is used; where onnxsim fails (or
    ``export.simplify`` is off) the exported graph is timed as is.
    """
    try:
        export_onnx(module, path, input_shape=input_shape, exporter=SCORING_EXPORTER, opset=export.opset,
                    dynamic_batch=True, metadata=metadata)
    except OnnxExportError:
        export_onnx(module, path, input_shape=input_shape, exporter=export.exporter, opset=export.opset,
                    dynamic_batch=True, metadata=metadata)
    if export.simplify:
        _simplify_in_place(path)
    return path


def _simplify_in_place(path: Path) -> None:
    import onnx
    import onnxsim

    model = onnx.load(str(path))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim fails in many ways; the exported graph is then timed as is
        log.info("%s: onnxsim failed (%s): timing the exported graph", path.name, type(exc).__name__)
        return
    if not ok:
        log.info("%s: onnxsim's check failed: timing the exported graph", path.name)
        return
    del simplified.metadata_props[:]
    set_metadata(simplified, {p.key: p.value for p in model.metadata_props})
    with atomic_path(path) as tmp:
        onnx.save_model(simplified, str(tmp))
