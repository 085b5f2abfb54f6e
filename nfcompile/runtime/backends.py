"""Bench backends: the runtimes latency is measured on (exit scoring, `nfcompile bench`, latency tables).

One registry, read by the recipe check (`bench.backend`), the CLI's `--backend` choices, exit
scoring and `nfcompile check --list-archs`. A new runtime is one `register_backend` call here.
Nothing heavy is imported until a backend is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nfcompile.core.registry import Registry
from nfcompile.errors import StageSkipped
from nfcompile.runtime.base import Runner


@dataclass(frozen=True)
class Backend:
    name: str  # what recipes and --backend say
    summary: str
    gpu: bool  # times on a GPU (the latency belongs to that device)
    # Runs a TensorRT engine built from the ONNX file first (with the recipe's tensorrt section).
    needs_engine: bool
    unavailable: Callable[[], str | None]  # why it cannot time models on this machine, or None
    runner: Callable[[Path, int | None], Runner]  # (model file, intra-op threads) -> a runner


_BACKENDS: Registry[Backend] = Registry("bench backend")


def register_backend(backend: Backend) -> Backend:
    return _BACKENDS.register(backend.name, backend)


def list_backends() -> list[str]:
    return _BACKENDS.names()


def get_backend(name: str) -> Backend:
    return _BACKENDS.get(name)


def _ort(device: str) -> Backend:
    def unavailable() -> str | None:
        from nfcompile.runtime.ort_runner import ort_providers

        try:
            ort_providers(device)
        except StageSkipped as exc:
            return exc.reason
        return None

    def runner(path: Path, threads: int | None) -> Runner:
        from nfcompile.runtime.ort_runner import OrtRunner

        return OrtRunner(path, device=device, threads=threads)

    return Backend(f"ort-{device}", f"ONNX Runtime, {device.upper()} execution provider", gpu=device == "cuda",
                   needs_engine=False, unavailable=unavailable, runner=runner)


def _tensorrt() -> Backend:
    def unavailable() -> str | None:
        from nfcompile.runtime import tensorrt

        return tensorrt.tensorrt_unavailable_reason()

    def runner(path: Path, threads: int | None) -> Runner:
        from nfcompile.runtime.tensorrt import TrtRunner

        return TrtRunner(path)

    return Backend("tensorrt", "TensorRT engine built from the ONNX on this GPU", gpu=True, needs_engine=True,
                   unavailable=unavailable, runner=runner)


register_backend(_ort("cpu"))
register_backend(_ort("cuda"))
register_backend(_tensorrt())
