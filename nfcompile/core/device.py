"""Which device we train on, how much memory it has free, and what it is (for the manifest)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib import metadata

import torch

from nfcompile.errors import InputError


def cpu_threads(requested: int | str) -> tuple[int, str]:
    """The torch thread count for ``requested`` (a number, or "auto") and why.

    auto: the cores that other processes leave idle (their CPU use over a short sample), at least one.
    On a shared CPU, OpenMP threads that outnumber the free cores wait on each other at every op (a
    build slowed 30-40x with one other busy process on 2 cores); one thread fewer costs at most its share.
    """
    cores = os.cpu_count() or 1
    if requested != "auto":
        return int(requested), "recipe's threads"
    import psutil

    own = psutil.Process()
    own.cpu_percent(None)
    busy_percent = psutil.cpu_percent(interval=0.2)
    own_cores = own.cpu_percent(None) / 100.0
    other_busy = max(0.0, busy_percent / 100.0 * cores - own_cores)
    free = max(1, min(cores, cores - round(other_busy)))
    # Under torchrun the processes on this machine share the free cores.
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = max(1, free // local_processes)
    return share, (f"auto: {cores} core(s), {other_busy:.1f} kept busy by other processes"
                   + (f", shared by {local_processes} local processes" if local_processes > 1 else ""))


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA where there is none is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"device {name!r} is not a torch device name (use auto, cpu or cuda[:N])") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} asked for, but CUDA is not available on this machine",
                             hint="use device: auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise InputError(f"device {name!r} is not supported (use auto, cpu or cuda[:N])")
    return device


@dataclass(frozen=True)
class FreeMemory:
    bytes: int
    total: int
    source: str  # how it was read, for the plan and the manifest


def free_memory(device: torch.device) -> FreeMemory:
    """Free memory of the training device: NVML, then cudaMemGetInfo (Jetson), or host RAM."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                # NVML numbers every GPU of the machine (by PCI bus) and ignores CUDA_VISIBLE_DEVICES; torch
                # maps the process's ordinal to NVML's (private: any error falls back to the CUDA runtime).
                handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda._get_nvml_device_index(index))
                info = pynvml.nvmlDeviceGetMemoryInfo(handle)
                return FreeMemory(int(info.free), int(info.total), "nvml")
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # NVML missing or "not supported" (Jetson): ask the CUDA runtime
            free, total = torch.cuda.mem_get_info(index)
            return FreeMemory(int(free), int(total), "cudaMemGetInfo")
    import psutil

    vm = psutil.virtual_memory()
    return FreeMemory(int(vm.available), int(vm.total), "host RAM (psutil)")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    names = ["nfcompile", "torch", "torchvision", "onnx", "onnxruntime", "onnxsim", "onnxscript",
             "numpy", "tensorrt", "pydantic", "scikit-learn"]
    versions = {name: _version(name) for name in names}
    versions["python"] = platform.python_version()
    versions["cuda (torch build)"] = torch.version.cuda
    return versions


def device_fingerprint(device: torch.device | None = None) -> dict[str, object]:
    """What produced a number: machine, CPU, threads, and the GPU when one is used."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update({
            "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_memory_bytes": int(props.total_memory),
            "cuda_driver": _cuda_driver_version(),
        })
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cuda_driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return str(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
