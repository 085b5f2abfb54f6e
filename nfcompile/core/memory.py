"""Measured peak memory of live tensors on the training device.

Two kinds of measurement, for two purposes:

- `PeakMeter`, for the profiler: the peak of one training step on copies of a unit, which the
  planner fits its memory lines with.
- `BlockMeter`, for training: the peak over a whole block, from something independent of the plan.
  CUDA: `torch.cuda.max_memory_allocated` over every step, evaluation and the caching pass (every
  allocation on the device counts, whoever made it). CPU: `LiveTensorBytes` active over the whole
  block and seeded from a scan of every tensor alive in the process (`gc`; inside `training_scope`,
  of the objects the training created, beside the network's own tensors), not a list of what the
  plan thinks is resident; beside it, the rise of the process's anonymous resident memory (psutil,
  sampled every few milliseconds), an outside cross-check that also sees allocator caching and
  library buffers.

`LiveTensorBytes` is a TorchDispatchMode that sees every tensor an operator returns while it is
active, counts each storage once while it lives (a weak reference's callback subtracts it when freed), and
files each under a category: the one it was seeded with, or the phase of training that allocated it
(`memory_phase`), so an overshoot can say what took the memory. torch ships a richer tracker
(`torch.distributed._tools.mem_tracker.MemTracker`) that reports the same peaks
(tests/core/test_memory.py checks that, over a whole block) but keeps per-module statistics on
every allocation, which made whole-network profiling ten times slower; torch.profiler's CPU memory
events miss most allocations. Neither sees scratch memory a kernel allocates internally.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Iterable, Iterator

import psutil
import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


_PHASE: contextvars.ContextVar[str] = contextvars.ContextVar("nfcompile_memory_phase", default="training step: activations, gradients")


@contextlib.contextmanager
def memory_phase(name: str) -> Iterator[None]:
    """Tensors allocated inside are filed under ``name`` ("batch", "evaluation", "caching pass", ...)."""
    token = _PHASE.set(name)
    try:
        yield
    finally:
        _PHASE.reset(token)


class LiveTensorBytes(TorchDispatchMode):
    """Peak of live tensor storage bytes while active (CPU), with what held them at the peak."""

    def __init__(self, existing: Iterable[torch.Tensor] = (), *,
                 seeded: dict[str, Iterable[torch.Tensor]] | None = None):
        """``existing`` are counted from the start as "resident"; ``seeded`` the same, by category."""
        super().__init__()
        self._live: dict[int, tuple[int, str, weakref.ref]] = {}  # storage -> (bytes, category, its weakref)
        self.current = 0
        self.peak = 0
        self.by_category: dict[str, int] = {}
        self.peak_breakdown: dict[str, int] = {}
        for category, tensors in (seeded or {}).items():
            for tensor in tensors:
                self._count(tensor, category)
        for tensor in existing:
            self._count(tensor, "resident")

    def _count(self, tensor: object, category: str | None = None) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided or tensor.is_meta:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata  # the C++ StorageImpl: shared by every view of it
        if key in self._live:
            return
        size = storage.nbytes()
        if type(size) is not int:  # a symbolic size: a traced (fake) tensor left by an exporter, no memory
            return
        category = category or _PHASE.get()
        # A plain weak reference with a callback rather than weakref.finalize: finalize keeps a registry
        # entry per object, and the tracker makes one for every tensor an operator returns.
        self._live[key] = (size, category, weakref.ref(storage, lambda _, key=key: self._release(key)))
        self.current += size
        self.by_category[category] = self.by_category.get(category, 0) + size
        if self.current > self.peak:
            self.peak = self.current
            self.peak_breakdown = dict(self.by_category)

    def _release(self, key: int) -> None:
        size, category, _ = self._live.pop(key, (0, "", None))
        self.current -= size
        if category:
            self.by_category[category] -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in _returned(out):
            self._count(tensor)
        return out


def _returned(out: object) -> Iterable[object]:
    """What an operator returned, flattened. Operators return a tensor or a flat tuple or list of them
    (with None or numbers): those are read directly, and pytree's generic walk, which would otherwise
    run after every operator while the tracker is active, only for nested containers."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)) and not any(isinstance(item, (tuple, list, dict)) for item in out):
        return out
    return tree_flatten(out)[0]


def live_tensors(device: torch.device) -> list[torch.Tensor]:
    """Every tensor alive in the process on ``device`` (a scan of the garbage collector's objects, after
    a collection)."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some of torch's deprecated module objects warns
        warnings.simplefilter("ignore")
        objects = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    return [obj for obj in objects if _holds_memory_on(obj, device)]


def _holds_memory_on(tensor: torch.Tensor, device: torch.device) -> bool:
    """A tensor with a plain storage of its own on ``device`` (not meta, fake or a wrapper)."""
    try:
        return (tensor.device == device and not tensor.is_meta and tensor.layout == torch.strided
                and not isinstance(tensor, FakeTensor) and tensor.untyped_storage() is not None)
    except (RuntimeError, ReferenceError):  # tensor subclasses and wrappers without a plain storage
        return False


class RssRise:
    """Peak rise of the process's anonymous resident memory (RSS minus file-backed pages) above its
    level at the start, sampled every ``interval`` seconds in a thread: an outside view of the same
    block, which also sees what the tensor tracker cannot (allocator caching, library buffers)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.rise = 0
        self.samples = 0
        self._stop = threading.Event()
        self._process = psutil.Process()

    def _anon(self) -> int:
        info = self._process.memory_info()
        return int(info.rss - getattr(info, "shared", 0))

    def __enter__(self) -> "RssRise":
        self._start = self._anon()
        self._thread = threading.Thread(target=self._sample, name="nfcompile-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.rise = max(self.rise, self._anon() - self._start)
            self.samples += 1
            self._stop.wait(self.interval)

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.rise = max(self.rise, self._anon() - self._start)


@dataclass(frozen=True)
class BlockMemory:
    """What `BlockMeter` measured over one block."""

    peak: int  # tracked peak bytes on the training device
    breakdown: dict[str, int]  # by category at that peak (CPU); {} on CUDA
    rss_rise: int | None  # anonymous RSS rise over the block (CPU training); None on CUDA
    method: str  # how it was measured, in words


_OUTSIDE: contextvars.ContextVar[list | None] = contextvars.ContextVar("nfcompile_outside_tensors", default=None)
# CPU: the network's own tensors when the training began (weak references). The scope freezes every
# object then alive, so the scans inside no longer see these; the meters add them back.
_NETWORK: contextvars.ContextVar[list | None] = contextvars.ContextVar("nfcompile_network_tensors", default=None)
# CUDA: bytes allocated on the device before the training began that are not the network's own.
_OUTSIDE_BYTES: contextvars.ContextVar[int] = contextvars.ContextVar("nfcompile_outside_cuda_bytes", default=0)


def warm_up_libraries(device: torch.device) -> None:
    """On CUDA, have the libraries allocate what they keep for the life of the process before anything
    is measured. cuBLAS keeps a workspace per thread and stream from its first matrix multiply on
    (8 MiB + 128 KiB by default, 32 MiB on Hopper; a forward's and a backward's, which autograd runs
    on its own thread), allocated through torch's caching allocator, so `max_memory_allocated` sees
    it. Allocated mid-measurement it landed in whichever step or block came first; allocated here it
    is the process's, as the CUDA context is, and no reading counts it."""
    if device.type != "cuda":
        return
    with torch.enable_grad():
        layers = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)).to(device)
        layers(torch.randn(2, 1, 4, 4, device=device)).sum().backward()
    del layers
    torch.cuda.synchronize(device)


@contextlib.contextmanager
def training_scope(device: torch.device, network: Iterable[nn.Module] = ()) -> Iterator[None]:
    """Mark every tensor alive now, except ``network``'s, as outside the training: a caller's own
    models, an earlier build's results in the same process, CUDA libraries' workspaces. The block
    meters inside leave them out: on CPU of their scan (weak references: what is freed meanwhile
    stops being excluded); on CUDA as a byte count taken off `max_memory_allocated` (what is freed
    meanwhile is still taken off, so a reading there errs low by at most that)."""
    mine = [t for m in network for t in (*m.parameters(), *m.buffers())]
    tokens: list[tuple[contextvars.ContextVar, contextvars.Token]] = []
    if device.type == "cuda":
        warm_up_libraries(device)
        gc.collect()
        own = storage_bytes(t for t in mine if t.is_cuda)
        tokens.append((_OUTSIDE_BYTES, _OUTSIDE_BYTES.set(max(0, int(torch.cuda.memory_allocated(device)) - own))))
    else:
        own_storages = {t.untyped_storage()._cdata for t in mine}
        outside = [weakref.ref(t) for t in live_tensors(device) if t.untyped_storage()._cdata not in own_storages]
        tokens += [(_OUTSIDE, _OUTSIDE.set(outside)), (_NETWORK, _NETWORK.set([weakref.ref(t) for t in mine]))]
    del mine  # weak references only: a tensor the training replaces must not stay alive (and counted)
    _FREEZE.enter()
    try:
        yield
    finally:
        _FREEZE.exit()
        for variable, token in reversed(tokens):
            variable.reset(token)


class _ObjectsAliveBeforeTraining:
    """Every object alive when training begins is outside the training or known (the network's tensors,
    listed), so no scan or collection inside needs to look at it again: frozen (`gc.freeze`), `gc.collect`
    and `gc.get_objects` skip it. In a build's process a scan of the 366k objects alive took 0.18 s
    (`gc.collect` 0.12 s of it), once per NeuroFlux block: 1.7 s of a 23 s VGG-16 run on the benchmarks'
    Fashion-MNIST; of what training created it takes microseconds.

    The freeze is the process's, while scopes belong to threads: trainings that overlap share one freeze,
    lifted when the last ends (lifted earlier, another's scans would suddenly see what its own scope never
    listed as outside). A caller's own frozen objects stay frozen: then nothing is frozen or thawed here,
    and the scans cost what they did."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._ours = False

    def enter(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._ours = gc.get_freeze_count() == 0
                if self._ours:
                    gc.freeze()
            self._depth += 1

    def exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._ours:
                gc.unfreeze()


_FREEZE = _ObjectsAliveBeforeTraining()


def _outside_storages() -> set[int]:
    return {t.untyped_storage()._cdata for ref in (_OUTSIDE.get() or ()) if (t := ref()) is not None}


def resident_tensors(device: torch.device, exclude: Iterable[torch.Tensor] = ()) -> list[torch.Tensor]:
    """Every tensor the training holds on ``device`` now, each storage once: a scan of the live objects
    (`live_tensors`), and inside `training_scope` the network's tensors, which its freeze hides from the
    scan; what was alive outside the training and what shares storage with ``exclude`` left out."""
    skip = _outside_storages() | {t.untyped_storage()._cdata for t in exclude}
    network = [t for ref in (_NETWORK.get() or ()) if (t := ref()) is not None and _holds_memory_on(t, device)]
    found: dict[int, torch.Tensor] = {}
    for tensor in (*live_tensors(device), *network):
        key = tensor.untyped_storage()._cdata
        if key not in skip:
            found.setdefault(key, tensor)
    return list(found.values())


class BlockMeter:
    """The independent peak over a whole block (see the module docstring).

    >>> with BlockMeter(device, seeded={"block weights": [...]}, exclude=images) as meter: train_block()
    >>> meter.reading.peak, meter.reading.breakdown

    ``seeded`` names categories of the tensors alive at the start (block weights, optimizer state,
    activation cache); every other live tensor the scan finds is "other resident tensors".
    ``exclude`` are the read-only training images, which on CPU the budget leaves out; so is what was
    alive before the training began (`training_scope`), which is not the training's.
    """

    def __init__(self, device: torch.device, *, seeded: dict[str, list[torch.Tensor]] | None = None,
                 exclude: Iterable[torch.Tensor] = ()):
        self.device = device
        self.seeded = seeded or {}
        self.exclude = list(exclude)
        self.reading: BlockMemory | None = None
        self.scan_seconds = 0.0  # what starting took (the CPU scan): the trainers report it as METER_SCAN
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "BlockMeter":
        started = time.perf_counter()
        self._start()
        self.scan_seconds = time.perf_counter() - started
        return self

    def _start(self) -> None:
        if self.device.type == "cuda":
            gc.collect()  # as the CPU scan does: garbage in a reference cycle is nobody's peak
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        known = {t.untyped_storage()._cdata for tensors in self.seeded.values() for t in tensors
                 if isinstance(t, torch.Tensor)}
        others = [t for t in resident_tensors(self.device, self.exclude) if t.untyped_storage()._cdata not in known]
        self._scanned = len(others)
        self._tracker = LiveTensorBytes(seeded={**self.seeded, "other resident tensors": others})
        self._rss = self._stack.enter_context(RssRise())
        self._stack.enter_context(self._tracker)

    def __exit__(self, *exc_info: object) -> None:
        # Let go of the tensors named at the start: a meter kept around after its block (the caller's
        # `as` name) would otherwise keep that block's input cache alive into the next block's scan.
        self.seeded, self.exclude = {}, []
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            outside = _OUTSIDE_BYTES.get()
            self.reading = BlockMemory(
                max(0, int(torch.cuda.max_memory_allocated(self.device)) - outside), {}, None,
                "torch.cuda.max_memory_allocated over every step, evaluation and caching pass, less the "
                f"{outside} bytes allocated on the device before training began (CUDA libraries' workspaces, "
                "what the process held)")
            return
        self._stack.close()
        breakdown = {k: v for k, v in sorted(self._tracker.peak_breakdown.items(), key=lambda kv: -kv[1]) if v}
        self.reading = BlockMemory(
            self._tracker.peak, breakdown, self._rss.rise,
            f"live-tensor tracker over every step, evaluation, snapshot and caching pass, seeded from a scan of "
            f"every live tensor ({self._scanned} besides the block's own; training images excluded); "
            f"RSS sampled {self._rss.samples} times")


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


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared weights counted once)."""
    seen = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors if t.layout == torch.strided}
    return sum(seen.values())


def persistent_bytes(modules: Iterable[nn.Module], optimizers: Iterable[torch.optim.Optimizer]) -> int:
    """Parameters, buffers and optimizer state (gradients are freed after every step)."""
    modules, optimizers = list(modules), list(optimizers)
    grads = {p.grad.untyped_storage()._cdata for m in modules for p in m.parameters() if p.grad is not None}
    return storage_bytes(t for t in module_state_tensors(modules, optimizers)
                         if t.untyped_storage()._cdata not in grads)


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
                 *, resident: list[torch.Tensor] | None = None):
        """``resident``: other tensors living on the device during the steps (an activation cache). A
        reading is the given modules' and optimizers' state and resident tensors, plus what the step
        allocates: on CPU what the tracker seeded with them sees; on CUDA the allocator's peak less
        what else was allocated before the step (the real model, caches, libraries' workspaces)."""
        self.device = device
        self.modules = modules
        self.optimizers = optimizers
        self.resident = list(resident or [])
        self.reading = PeakReading()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = int(torch.cuda.memory_allocated(self.device))
            # What was there before includes the modules' own weights and optimizer state: they count,
            # as on the CPU. Leaving them out made every fit predict the step's activations alone, and
            # the planner (which subtracts `persistent` from a prediction) count no block's weights at
            # all on a GPU.
            own = storage_bytes([*module_state_tensors(self.modules, self.optimizers), *self.resident])
            yield
            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device)) - before + own
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
