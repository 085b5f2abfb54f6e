"""Latency tables: exits timed on the target device, fed back to scoring through `bench.table`.

Run `nfcompile bench RUN --emit-table FILE` on the device (a Jetson, a phone's host...): it times
every ONNX in the run's `exits/` folder and writes FILE. Setting `bench.table: FILE` in the recipe
then scores exits with those numbers instead of timing them on the build machine. Every entry
carries the sha256 of the ONNX it timed, so a table from another training is refused.

Format (JSON, `format: nfcompile.latency_table/1`)::

    {"format": ..., "backend": "tensorrt", "runner": "...", "device": {fingerprint},
     "batch_sizes": [1, 32], "warmup": 10, "repeats": 50,
     "exits": {"exit_03": {"onnx_sha256": "...", "onnx_bytes": 123,
                           "latency": [{"batch_size": 1, "p50_ms": ..., ...}, ...]}, ...}}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nfcompile import __version__
from nfcompile.core.io import read_json, sha256_file, write_json
from nfcompile.core.log import get_logger
from nfcompile.core.results import Latency, Result
from nfcompile.errors import InputError
from nfcompile.recipe.schema import BenchSection, TensorRTSection
from nfcompile.stages.score.timing import (bench_fingerprint, check_backend, device_summary,
                                           onnx_input_shape, time_onnx_files)

log = get_logger(__name__)

TABLE_FORMAT = "nfcompile.latency_table/1"
_RERUN_HINT = "re-run `nfcompile bench RUN --emit-table FILE` on the target for this training's exits"


@dataclass(frozen=True)
class TableEntry(Result):
    onnx_sha256: str
    onnx_bytes: int
    latency: tuple[Latency, ...]


@dataclass(frozen=True)
class LatencyTable(Result):
    format: str
    backend: str  # bench.backend it was timed on
    runner: str  # the runtime and its settings, as the timing source describes them
    device: dict[str, Any]  # nfcompile.core.device fingerprint of the target
    batch_sizes: tuple[int, ...]
    warmup: int
    repeats: int
    exits: dict[str, TableEntry]  # by ONNX file stem: exit_03, full
    nfcompile_version: str = ""

    def describe(self, path: Path) -> str:
        """latency_source for exits scored from this table."""
        return f"table: {path} ({self.backend} on {device_summary(self.device)})"

    def latency_for(self, name: str, onnx_sha256: str, batch_sizes: Sequence[int], *,
                    path: Path) -> tuple[Latency, ...]:
        """The entry for ``name`` at ``batch_sizes``; refused when it timed another ONNX or lacks a batch."""
        entry = self.exits.get(name)
        if entry is None:
            raise InputError(f"latency table {path}: no entry for {name} "
                             f"(it has {', '.join(sorted(self.exits)) or 'none'})", hint=_RERUN_HINT)
        if entry.onnx_sha256 != onnx_sha256:
            raise InputError(f"latency table {path}: {name} was timed on an ONNX with sha256 "
                             f"{entry.onnx_sha256[:16]}..., but the exit scored now has {onnx_sha256[:16]}... "
                             f"(another training, exporter or opset)", hint=_RERUN_HINT)
        by_batch = {lat.batch_size: lat for lat in entry.latency}
        missing = [b for b in batch_sizes if b not in by_batch]
        if missing:
            raise InputError(f"latency table {path}: {name} has no latency at batch size "
                             f"{', '.join(map(str, missing))} (it has {', '.join(map(str, sorted(by_batch)))})",
                             hint="time those sizes with `nfcompile bench RUN --emit-table FILE --batch-size N`, "
                             "or set bench.batch_sizes to the table's")
        return tuple(by_batch[b] for b in batch_sizes)


def emit_latency_table(exits_dir: Path, table_path: Path, bench: BenchSection, *,
                       tensorrt: TensorRTSection | None = None, engine_dir: Path | None = None) -> LatencyTable:
    """Time every ``*.onnx`` in ``exits_dir`` on ``bench.backend`` here and write the table to ``table_path``.

    ``bench`` gives the backend, batch sizes, warm-up, repeats and threads. TensorRT also needs the
    recipe's ``tensorrt`` section and an ``engine_dir`` to build engines into (not the bundle: its
    files are hashed).
    """
    exits_dir = Path(exits_dir)
    onnx_files = sorted(exits_dir.glob("*.onnx"))
    if not onnx_files:
        raise InputError(f"{exits_dir}: no exit ONNX files to time",
                         hint="point at a run folder whose exits were scored (`nfcompile build` or `select`)")
    check_backend(bench.backend)
    entries, runner = {}, ""
    # Timed together in interleaved rounds, as exit scoring times them (one input shape for all).
    timings = time_onnx_files({path.stem: path for path in onnx_files}, onnx_input_shape(onnx_files[0]), bench,
                              tensorrt=tensorrt, engine_dir=engine_dir)
    for path in onnx_files:
        timing = timings[path.stem]
        entries[path.stem] = TableEntry(sha256_file(path), path.stat().st_size, timing.latency)
        runner = timing.runner
        log.info("%s: p50 %s", path.stem, ", ".join(f"{lat.p50_ms:.3f} ms at batch {lat.batch_size}"
                                                     for lat in timing.latency))
    table = LatencyTable(format=TABLE_FORMAT, backend=bench.backend, runner=runner,
                         device=bench_fingerprint(bench.backend), batch_sizes=tuple(bench.batch_sizes),
                         warmup=bench.warmup, repeats=bench.repeats, exits=entries,
                         nfcompile_version=__version__)
    write_json(table_path, table)
    return table


def read_latency_table(path: Path) -> LatencyTable:
    """Load a table written by `emit_latency_table`; anything else is an InputError naming the file."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{path}: not an nfcompile latency table (format {found!r}, expected {TABLE_FORMAT!r})",
                         hint="write one with `nfcompile bench RUN --emit-table FILE`")
    try:
        return LatencyTable.from_dict(data, source=f"{path} (a malformed latency table)")
    except InputError as exc:
        raise InputError(exc.message, hint="write it again with `nfcompile bench RUN --emit-table FILE`") from None
