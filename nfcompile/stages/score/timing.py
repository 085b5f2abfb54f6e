"""Latency of one exported ONNX file on a bench backend: ONNX Runtime (CPU or CUDA) or TensorRT.

Used by exit scoring and by the latency-table writer that `nfcompile bench --emit-table` runs on
the target device, so both time models the same way.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from nfcompile.core.device import device_fingerprint
from nfcompile.core.io import write_bytes
from nfcompile.core.results import Latency
from nfcompile.errors import InputError
from nfcompile.recipe.schema import BenchSection, TensorRTSection
from nfcompile.runtime.backends import get_backend
from nfcompile.runtime.base import Runner
from nfcompile.runtime.latency import DEFAULT_ROUNDS, measure_interleaved


@dataclass(frozen=True)
class Timing:
    latency: tuple[Latency, ...]  # one per batch size, in the order asked for
    runner: str  # the runtime and its settings
    source: str  # what measured it, where and how, for ExitScore.latency_source


def check_backend(backend: str) -> None:
    """Fail before any work when ``backend`` cannot time models on this machine."""
    reason = get_backend(backend).unavailable()
    if reason:
        raise InputError(f"bench.backend {backend!r} cannot time exits on this machine: {reason}",
                         hint="set bench.backend: ort-cpu, or time the exits on the target with "
                         "`nfcompile bench RUN --emit-table FILE` and set bench.table: FILE")


def uses_gpu(backend: str) -> bool:
    return get_backend(backend).gpu


def device_summary(fingerprint: dict[str, object]) -> str:
    """One line naming the machine a latency belongs to: the GPU when one was used, else the CPU."""
    if fingerprint.get("gpu"):
        return f"{fingerprint['gpu']} (compute {fingerprint.get('compute_capability', '?')})"
    return f"{fingerprint.get('processor', 'unknown CPU')}, {fingerprint.get('cpu_count', '?')} CPUs"


def bench_fingerprint(backend: str) -> dict[str, object]:
    gpu = uses_gpu(backend) and torch.cuda.is_available()
    return device_fingerprint(torch.device("cuda") if gpu else None)


def time_onnx(onnx_path: Path, input_shape: tuple[int, ...], bench: BenchSection, *,
              tensorrt: TensorRTSection | None = None, engine_dir: Path | None = None) -> Timing:
    """Warm up, then p50/p90 of ``bench.repeats`` runs at every ``bench.batch_sizes``.

    ``input_shape`` is one sample's (C, H, W). TensorRT builds an engine into ``engine_dir`` first,
    with the precision and workspace of the recipe's ``tensorrt`` section.
    """
    return time_onnx_files({"model": Path(onnx_path)}, input_shape, bench, tensorrt=tensorrt,
                           engine_dir=engine_dir)["model"]


def time_onnx_files(onnx_paths: dict[str, Path], input_shape: tuple[int, ...], bench: BenchSection, *,
                    tensorrt: TensorRTSection | None = None, engine_dir: Path | None = None,
                    rounds: int = DEFAULT_ROUNDS) -> dict[str, Timing]:
    """`time_onnx` for several files at once, interleaved: every round times each file in turn.

    All runners are active together, so the round-robin measures every model under the same load.
    """
    made = {key: _runner(Path(path), input_shape, bench, tensorrt, engine_dir) for key, path in onnx_paths.items()}
    runners = {key: runner for key, (runner, _) in made.items()}
    with contextlib.ExitStack() as stack:
        for runner in runners.values():
            stack.enter_context(runner)
        latency = measure_interleaved(runners, input_shape, tuple(bench.batch_sizes), warmup=bench.warmup,
                                      repeats=bench.repeats, rounds=rounds)
    where = device_summary(bench_fingerprint(bench.backend))
    shared = (f"{bench.warmup} warm-up + {bench.repeats} timed runs in {min(rounds, bench.repeats)} round-robin "
              f"rounds across {len(onnx_paths)} model(s), on {where}")
    return {key: Timing(latency[key], what, f"measured: {what}, {shared}") for key, (_, what) in made.items()}


def _runner(onnx_path: Path, input_shape: tuple[int, ...], bench: BenchSection,
            tensorrt: TensorRTSection | None, engine_dir: Path | None) -> tuple[Runner, str]:
    backend = get_backend(bench.backend)
    if not backend.needs_engine:
        runner = backend.runner(onnx_path, bench.threads)
        threads = f"{bench.threads} threads" if bench.threads else "default threads"
        return runner, f"{runner.name}, {threads}"
    if tensorrt is None or engine_dir is None:
        raise ValueError(f"bench.backend {bench.backend} needs the recipe's tensorrt section and an engine folder")
    from nfcompile.runtime import tensorrt as trt_runtime  # lazy: TensorRT is optional

    # Exits are not quantized (only the chosen one gets a calibrated QDQ model), so an int8 recipe
    # times its exits at fp16, the closest precision that needs no calibration; the source says so.
    precision = "fp16" if tensorrt.precision == "int8" else tensorrt.precision
    # The profile covers every batch size we time as well as the deployed engine's range.
    low = min(tensorrt.min_batch, *bench.batch_sizes)
    high = max(tensorrt.max_batch, *bench.batch_sizes)
    opt = min(max(tensorrt.opt_batch, low), high)
    engine_path = Path(engine_dir) / f"{onnx_path.stem}.{precision}.engine"
    trt_runtime.engine_from_onnx(onnx_path, engine_path, precision=precision,
                                 min_shape=(low, *input_shape), opt_shape=(opt, *input_shape),
                                 max_shape=(high, *input_shape), workspace_bytes=int(tensorrt.workspace),
                                 timing_cache=_timing_cache(tensorrt, Path(engine_dir)))
    runner = backend.runner(engine_path, bench.threads)
    note = f" (recipe asks int8; exits timed at {precision})" if precision != tensorrt.precision else ""
    return runner, (f"TensorRT {precision} engine, profile batch {low}..{opt}..{high}{note}; reported: wall time "
                    "per call with host-device copies (TrtRunner.last_timing splits off the engine's own time)")


def _timing_cache(tensorrt: TensorRTSection, engine_dir: Path) -> Path:
    """A timing cache of our own, shared by every exit's build (their layers repeat), seeded from
    the recipe's `tensorrt.timing_cache`, which the builder would otherwise overwrite: it is read only."""
    cache = engine_dir / "timing.cache"
    if not cache.exists() and tensorrt.timing_cache is not None:
        write_bytes(cache, Path(tensorrt.timing_cache).read_bytes())
    return cache


def onnx_input_shape(onnx_path: Path) -> tuple[int, ...]:
    """One sample's input shape (C, H, W) as the ONNX file declares it (the batch dim dropped)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError
        raise InputError(f"{onnx_path}: not a readable ONNX file ({exc})") from None
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims[1:])
    if not shape or any(size <= 0 for size in shape):
        raise InputError(f"{onnx_path}: input {model.graph.input[0].name!r} has no fixed per-sample shape "
                         f"({[d.dim_param or d.dim_value for d in dims]})")
    return shape
