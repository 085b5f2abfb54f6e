"""How training holds to the memory budget: the CUDA allocator cap and where peaks are measured."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from nfcompile.core.memory import PeakMeter
from nfcompile.recipe.schema import TrainSection


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


def tracked_steps(device: torch.device, train: TrainSection) -> int:
    """CUDA measures every step at no cost (one meter around the whole run); on CPU the allocation
    tracker observes the first steps, which have the same shapes as the rest."""
    return 0 if device.type == "cuda" else train.neuroflux.track_steps


@contextlib.contextmanager
def whole_run_meter(meter: PeakMeter, device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        with meter.step():
            yield
    else:
        yield
