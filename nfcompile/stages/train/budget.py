"""How training holds to the memory budget: the CUDA allocator cap, the independent measurement of
every block (`core.memory.BlockMeter`), and the check that fails a block over its budget."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterable, Iterator

import torch
from torch import nn

from nfcompile.core.bytesize import format_bytes
from nfcompile.core.log import get_logger
from nfcompile.core.memory import BlockMeter, BlockMemory
from nfcompile.core.results import BlockResult
from nfcompile.core.tensorboard import log_scalars
from nfcompile.data.datasets import DataBundle
from nfcompile.errors import BudgetExceeded

log = get_logger(__name__)


@contextlib.contextmanager
def memory_cap(device: torch.device, budget: int, enforce: bool) -> Iterator[None]:
    """On CUDA, cap the caching allocator at the budget so an overshoot fails loudly (OOM)."""
    if device.type != "cuda" or not enforce:
        yield
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def block_meter(device: torch.device, modules: Iterable[nn.Module], data: DataBundle,
                caches: Iterable[torch.Tensor] = ()) -> BlockMeter:
    """The meter for one block: its own weights and the activation cache it reads named as such, every
    other live tensor found by the scan, the read-only training images left out."""
    weights = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    images = [split.images for split in (data.train, data.val, data.test)]
    return BlockMeter(device, seeded={"block weights": weights, "activation cache": list(caches)}, exclude=images)


def with_memory(result: BlockResult, memory: BlockMemory) -> BlockResult:
    return dataclasses.replace(result, measured_peak_bytes=memory.peak, rss_rise_bytes=memory.rss_rise,
                               peak_breakdown=dict(memory.breakdown), measurement=memory.method)


def log_block_memory(method: str, result: BlockResult) -> None:
    """The block's memory on TensorBoard (MiB), one point per block."""
    mib = lambda n: n / 2**20 if n is not None else None
    log_scalars(f"{method}/memory_mib", result.index, {
        "measured_peak": mib(result.measured_peak_bytes), "predicted_peak": mib(result.predicted_peak_bytes),
        "budget": mib(result.budget_bytes), "process_rss_rise": mib(result.rss_rise_bytes)})


def check_budget(result: BlockResult, what: str, *, enforce: bool) -> None:
    """Fail (or, with budget.enforce off, warn about) a block whose measured peak is over its budget,
    naming what held the memory at the peak."""
    peak, budget = result.measured_peak_bytes, result.budget_bytes
    if not peak or budget is None or peak <= budget:
        return
    held = ", ".join(f"{name} {format_bytes(size)}" for name, size in result.peak_breakdown.items())
    message = (f"{what}: measured peak {format_bytes(peak)} exceeds budget.memory {format_bytes(budget)}"
               + (f" (at the peak: {held})" if held else ""))
    if enforce:
        raise BudgetExceeded(message, hint="finished blocks are checkpointed; raise the budget or set "
                             "budget.enforce: false, then --resume")
    log.warning("%s (budget.enforce is off)", message)
