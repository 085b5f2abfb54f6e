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

# The least room `memory_cap` leaves above the budget for the caching allocator's segments: two of the
# 20 MiB segments it takes for requests up to 10 MiB, and a 2 MiB one per small-request pool.
ALLOCATOR_SLACK = 48 * 2**20


@contextlib.contextmanager
def memory_cap(device: torch.device, budget: int, enforce: bool) -> Iterator[None]:
    """On CUDA, a backstop against a runaway allocation: the caching allocator may reserve no more than
    it holds in use when training begins, plus the budget, plus room for its own granularity. The budget
    itself is checked on the measured peak (`check_budget`). A cap at the budget alone failed what the
    budget allows: the cap counts reserved bytes, and the allocator reserves whole segments (2 MiB for
    small requests, 20 MiB for those up to 10 MiB) and keeps freed ones, while the budget counts the
    bytes allocated from them; what the process held before (CUDA libraries' workspaces) counted too."""
    if device.type != "cuda" or not enforce:
        yield
        return
    torch.cuda.empty_cache()  # cached free segments: what the cap counts from is what is in use
    total = torch.cuda.get_device_properties(device).total_memory
    # torch 2.6 and later can say what the caller had set; before, nothing else sets it: the default.
    previous = getattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)(device)
    cap = int(torch.cuda.memory_reserved(device)) + budget + max(budget // 4, ALLOCATOR_SLACK)
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise BudgetExceeded(f"CUDA ran out of memory under the training's cap of {format_bytes(cap)} "
                             f"(budget.memory {format_bytes(budget)}, what the process held, and allocator "
                             f"slack): {str(error).splitlines()[0]}",
                             hint="raise the budget or set budget.enforce: false (a NeuroFlux run resumes "
                             "after its last finished block with --resume)") from error
    finally:
        torch.cuda.set_per_process_memory_fraction(previous, device)


def block_meter(device: torch.device, modules: Iterable[nn.Module], data: DataBundle,
                caches: Iterable[torch.Tensor] = ()) -> BlockMeter:
    """The meter for one block: its own weights and the activation cache it reads named as such, every
    other live tensor found by the scan, the read-only training images left out."""
    weights = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    images = [split.images for split in (data.train, data.val, data.monitor, data.test)]
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
