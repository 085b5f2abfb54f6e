"""Measured peak memory of live tensors on the training device.

CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.
CPU: `LiveTensorBytes`, a TorchDispatchMode that sees every tensor an operator returns while it is
active, counts each storage once while it lives (a weakref finalizer subtracts it when freed), and
starts from the tensors that already exist (parameters, buffers, gradients, optimizer state).
torch ships a richer tracker (`torch.distributed._tools.mem_tracker.MemTracker`) that reports the
same peaks (tests/core/test_memory.py checks that) but keeps per-module statistics on every
allocation, which made whole-network profiling ten times slower; torch.profiler's CPU memory events
miss most allocations. Neither sees scratch memory a kernel allocates internally.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Peak of live tensor storage bytes while active (CPU)."""

    def __init__(self, existing: Iterable[torch.Tensor] = ()):
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        for tensor in existing:
            self._count(tensor)

    def _count(self, tensor: object) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided or tensor.is_meta:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata  # the C++ StorageImpl: shared by every view of it
        if key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            self._count(tensor)
        return out


def module_state_tensors(modules: Iterable[nn.Module], optimizers: Iterable[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """Parameters, buffers, gradients and optimizer state: what lives between steps."""
    tensors: list[torch.Tensor] = []
    for module in modules:
        tensors.extend(module.parameters())
        tensors.extend(module.buffers())
        tensors.extend(p.grad for p in module.parameters() if p.grad is not None)
    for optimizer in optimizers:
        for state in optimizer.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return tensors


def persistent_bytes(modules: Iterable[nn.Module], optimizers: Iterable[torch.optim.Optimizer]) -> int:
    """Parameters, buffers and optimizer state (gradients are freed after every step)."""
    seen: dict[int, int] = {}
    modules, optimizers = list(modules), list(optimizers)
    for tensor in module_state_tensors(modules, optimizers):
        if tensor.layout == torch.strided:
            seen[tensor.untyped_storage()._cdata] = tensor.untyped_storage().nbytes()
    grads = {p.grad.untyped_storage()._cdata for m in modules for p in m.parameters() if p.grad is not None}
    return sum(size for key, size in seen.items() if key not in grads)


@dataclass
class PeakReading:
    total: int = 0  # peak live bytes over the measured steps
    persistent: int = 0  # parameters, buffers and optimizer state after the last step


class PeakMeter:
    """Measure the peak over one or more `step()` regions.

    >>> meter = PeakMeter(device, modules=[unit, head], optimizers=[opt])
    >>> with meter.step(): train_step()
    >>> meter.reading.total
    """

    def __init__(self, device: torch.device, modules: list[nn.Module], optimizers: list[torch.optim.Optimizer],
                 *, resident: list[torch.Tensor] | None = None, exclude_resident: bool = False):
        """``resident``: other tensors living on the device during the steps (an activation cache), which
        the CPU tracker counts from the start. ``exclude_resident``: on CUDA, leave out what was
        allocated before each step began (profiling one unit while other tensors live on the GPU).
        The CPU tracker only ever sees the given modules, optimizers and tensors and what the step
        allocates."""
        self.device = device
        self.modules = modules
        self.optimizers = optimizers
        self.resident = list(resident or [])
        self.exclude_resident = exclude_resident
        self.reading = PeakReading()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = int(torch.cuda.memory_allocated(self.device)) if self.exclude_resident else 0
            yield
            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device)) - before
        else:
            tracker = LiveTensorBytes([*module_state_tensors(self.modules, self.optimizers), *self.resident])
            with tracker:
                yield
            peak = tracker.peak
        self.reading = PeakReading(max(self.reading.total, peak),
                                   persistent_bytes(self.modules, self.optimizers))


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


@dataclass(frozen=True)
class MemoryFit:
    """mem(b) = max(P + b*A, P_low + b*A_low), both lines through measured peaks.

    Measurements show two regimes: at small batches the peak is the optimizer step (parameter-sized
    temporaries, a flat line), at large ones the activations of forward and backward (a steep one).
    One line through small batches alone under-predicts large ones (by a third on ResNet-18's
    middle units), so the steep line P + b*A goes through the two largest batches measured, which
    the profiler pushes up to the batch the budget allows, and the flat one through the two smallest.
    """

    fixed_bytes: int  # P
    bytes_per_sample: int  # A
    low_fixed_bytes: int
    low_bytes_per_sample: int
    persistent_bytes: int  # parameters, buffers, optimizer state: resident between steps
    measurements: tuple[tuple[int, int], ...]
    fit_error: float  # worst relative error of the model over all measurements
    seconds_per_sample: float

    def predicted(self, batch_size: int) -> int:
        return int(max(self.fixed_bytes + batch_size * self.bytes_per_sample,
                       self.low_fixed_bytes + batch_size * self.low_bytes_per_sample))

    def max_batch(self, budget: int, cap: int) -> int:
        """Largest batch whose predicted peak fits ``budget`` (0 when even batch 1 does not)."""
        if self.predicted(1) > budget:
            return 0
        fits = min((budget - self.fixed_bytes) // self.bytes_per_sample,
                   (budget - self.low_fixed_bytes) // self.low_bytes_per_sample)
        return int(max(1, min(cap, fits)))


def _line(p1: tuple[int, int], p2: tuple[int, int]) -> tuple[int, int]:
    (b1, m1), (b2, m2) = p1, p2
    slope = max(1.0, (m2 - m1) / (b2 - b1))  # memory never shrinks with the batch
    return int(round(max(0.0, m2 - slope * b2))), int(round(slope))


def fit_memory(measurements: list[tuple[int, int]], persistent_bytes: int = 0,
               seconds_per_sample: float = 0.0) -> MemoryFit:
    points = sorted(measurements)
    if len(points) < 2:
        raise ValueError("a memory fit needs measurements at two different batch sizes")
    high = _line(points[-2], points[-1])
    low = _line(points[0], points[1])
    fit = MemoryFit(*high, *low, persistent_bytes, tuple(points), 0.0, seconds_per_sample)
    error = max(abs(fit.predicted(b) - m) / m for b, m in points if m > 0)
    return MemoryFit(*high, *low, persistent_bytes, tuple(points), float(error), seconds_per_sample)
