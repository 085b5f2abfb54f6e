"""The chosen exit's deliverables (FP32, INT8, ORT format) timed side by side, in the build and by `bench`.

What a deployer picks between: each file at batch 1 and at the recipe's batch sizes, timed together
in interleaved rounds with the machine's load beside the figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from nfcompile.core.log import get_logger
from nfcompile.core.results import DeliverableLatency, FormatLatency
from nfcompile.recipe.schema import BenchSection
from nfcompile.runtime.latency import machine_load
from nfcompile.stages.score.timing import check_backend, time_onnx_files

log = get_logger(__name__)


def time_deliverables(root: Path, files: Mapping[str, str], accuracy: Mapping[str, float | None],
                      input_shape: tuple[int, ...], bench: BenchSection) -> DeliverableLatency:
    """Time every file of ``files`` (format -> path relative to ``root``) at batch 1 and ``bench.batch_sizes``.

    ``accuracy`` is each format's measured test accuracy (from its validation), shown beside its speed.
    """
    check_backend(bench.backend)
    root = Path(root)
    batches = tuple(sorted({1, *bench.batch_sizes}))
    section = bench.model_copy(update={"batch_sizes": batches})
    load = machine_load()
    if load.loaded:
        log.warning("timing the deliverables on a loaded machine (%s): latencies carry that noise", load.describe())
    timings = time_onnx_files({fmt: root / path for fmt, path in files.items()}, input_shape, section)
    formats = tuple(FormatLatency(format=fmt, file=path, bytes=(root / path).stat().st_size,
                                  latency=timings[fmt].latency, test_accuracy=accuracy.get(fmt))
                    for fmt, path in files.items())
    speedup = {}
    if "fp32" in timings and "int8" in timings:
        for fp32, int8 in zip(timings["fp32"].latency, timings["int8"].latency):
            speedup[f"b{fp32.batch_size}"] = fp32.p50_ms / int8.p50_ms if int8.p50_ms > 0 else 0.0
        slower = [key for key, value in speedup.items() if value <= 1.0]
        if slower:
            log.warning("INT8 is not faster than FP32 on this machine at batch %s (%s)",
                        ", ".join(k[1:] for k in slower), timings["int8"].runner)
    first = next(iter(timings.values()))
    return DeliverableLatency(backend=bench.backend, runner=first.runner, source=first.source, formats=formats,
                              load=load, int8_speedup=speedup)
