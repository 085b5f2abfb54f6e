"""The CUDA branches of the budget's accounting, on a machine without a GPU: torch.cuda's allocator
statistics are simulated by a byte counter (tensors stay on the CPU; a test says what the GPU would
hold), and NVML by a stand-in module. What each test pins down was found by reading the CUDA paths,
which no run has exercised on a GPU yet."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from nfcompile.core import distributed as dist
from nfcompile.core import memory
from nfcompile.core.device import free_memory
from nfcompile.core.memory import BlockMeter, PeakMeter, training_scope
from nfcompile.core.results import BlockPlan
from nfcompile.errors import BudgetExceeded, InputError
from nfcompile.learning import make_optimizer
from nfcompile.learning.parallel import gradient_bucket_bytes
from nfcompile.models import AuxHead, MultiExitNet
from nfcompile.recipe.schema import AugmentSection, BudgetSection, TrainSection
from nfcompile.stages.plan import plan_training
from nfcompile.stages.train.backprop import backprop_batch_size
from nfcompile.stages.train.budget import ALLOCATOR_SLACK, memory_cap
from nfcompile.stages.train.neuroflux import _off_device

from conftest import TINY_CLASSES, TINY_SIZE, make_tiny_unit_net

CUDA = torch.device("cuda")
MiB = 2**20


class FakeAllocator:
    """torch.cuda's allocated-bytes statistics, driven by the test."""

    def __init__(self, monkeypatch):
        self.allocated = self.peak = 0
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                            lambda device=None: setattr(self, "peak", self.allocated))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n


def test_a_step_reading_counts_the_modules_own_state_as_the_cpu_one_does(monkeypatch):
    """The profiler leaves out what else lives on the GPU (the real model, caches) by reading the
    allocator before the step. The copies' own weights and optimizer state were allocated before it too,
    and they must still count: the planner subtracts them from every prediction. (The simulated
    allocator's figures are the CPU step's, plus a megabyte of other tensors.)"""
    model = nn.Linear(100, 100)
    optimizer = make_optimizer(model.parameters(), TrainSection(), 8)
    step = lambda: model(torch.randn(8, 100)).sum().backward()
    step()
    optimizer.step()  # momentum buffers: optimizer state, allocated before any measured step
    model.zero_grad(set_to_none=True)
    on_cpu = PeakMeter(torch.device("cpu"), [model], [optimizer])
    with on_cpu.step():
        step()
    model.zero_grad(set_to_none=True)
    own = 2 * 4 * (100 * 100 + 100)  # weights and bias, and their momentum
    gpu = FakeAllocator(monkeypatch)
    gpu.alloc(MiB + own)  # other tensors, and the model's own state
    on_gpu = PeakMeter(CUDA, [model], [optimizer])
    with on_gpu.step():
        gpu.alloc(on_cpu.reading.total - own)  # the step's own allocations
        gpu.free(on_cpu.reading.total - own)
    assert on_cpu.reading.total > own
    assert on_gpu.reading.total == on_cpu.reading.total


def test_a_block_reading_leaves_out_what_the_process_held_before_training(monkeypatch):
    """cuBLAS keeps a workspace per thread from its first matrix multiply on (8 MiB + 128 KiB by default):
    allocated inside the first block it was that block's, in no prediction. Now training begins by
    allocating it (`warm_up_libraries`), and every reading leaves out what the process held by then,
    as the CPU meter leaves out a caller's tensors."""
    gpu = FakeAllocator(monkeypatch)
    gpu.alloc(3 * MiB)  # a caller's model, already on the GPU
    monkeypatch.setattr(memory, "warm_up_libraries", lambda device: gpu.alloc(8 * MiB + 128 * 2**10))
    with training_scope(CUDA, []):
        with BlockMeter(CUDA) as meter:
            gpu.alloc(5 * MiB)  # the block's weights, steps and caches
            gpu.free(5 * MiB)
    assert meter.reading.peak == 5 * MiB
    assert "before training began" in meter.reading.method


def test_the_allocator_cap_leaves_room_for_what_is_in_use_and_for_segments(monkeypatch):
    """The per-process fraction caps *reserved* bytes, which run ahead of the allocated bytes the budget
    counts; capped at the budget alone, a 12 MiB budget's first 20 MiB segment failed at once."""
    calls = []
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(total_memory=80 * 2**30))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 40 * MiB)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 0.5)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: calls.append(fraction))
    budget = 12 * MiB
    with memory_cap(CUDA, budget, enforce=True):
        pass
    assert calls == ["empty_cache", (40 * MiB + budget + ALLOCATOR_SLACK) / (80 * 2**30), 0.5]  # the caller's back
    calls.clear()
    with pytest.raises(BudgetExceeded) as info:
        with memory_cap(CUDA, budget, enforce=True):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB\nmore detail")
    assert "budget.memory 12.0 MiB" in str(info.value) and "Tried to allocate 20.00 MiB" in str(info.value)
    assert calls[-1] == 0.5


@pytest.mark.parametrize("placement", ["device", "recompute"])
def test_a_finished_block_leaves_the_gpu_but_the_units_later_blocks_recompute_through(placement):
    """The plan counts a recompute block's units on the GPU for the blocks after it, and nothing else."""
    net = MultiExitNet(make_tiny_unit_net(), {i: AuxHead(8, 16, TINY_CLASSES) for i in range(2)})
    moved = []
    for name, module in [*((f"unit {i}", u) for i, u in enumerate(net.units)),
                         *((f"head {k}", h) for k, h in net.heads.items())]:
        module.to = (lambda name: lambda *args, **kwargs: moved.append((name, args)))(name)
    block = BlockPlan(index=0, units=(0, 1), batch_size=8, predicted_peak_bytes=0, cache_placement=placement,
                      cache_bytes=0)
    _off_device(block, net, CUDA)
    expected = [("head 0", ("cpu",)), ("head 1", ("cpu",))]
    if placement == "device":
        expected += [("unit 0", ("cpu",)), ("unit 1", ("cpu",))]
    assert sorted(moved) == sorted(expected)


def test_the_auto_budget_reads_the_gpu_this_process_sees(monkeypatch):
    """NVML numbers every GPU of the machine and ignores CUDA_VISIBLE_DEVICES."""
    asked = []
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = lambda index: asked.append(index) or index
    nvml.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(free=[70, 3, 40][handle] * 2**30,
                                                                       total=80 * 2**30)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    free = free_memory(CUDA)
    assert asked == [2] and free.bytes == 40 * 2**30 and free.source == "nvml"


def test_on_several_processes_the_backprop_baseline_counts_ddps_gradient_buckets(monkeypatch):
    """DDP keeps a parameter-sized copy of the gradients (its buckets) on every rank: the plan's baseline
    batch and the trainer's predicted peak count it, as they do for the units."""
    net = make_tiny_unit_net()
    buckets = sum(p.numel() * 4 for p in net.parameters())
    plan = lambda: plan_training(net, TINY_CLASSES, image_size=TINY_SIZE, train_samples=256, val_samples=64,
                                 budget=BudgetSection(memory="1MiB"), train=TrainSection(),
                                 augment=AugmentSection(), device=torch.device("cpu"))
    alone = plan()
    batch, predicted = backprop_batch_size(alone, TrainSection(), net)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    assert gradient_bucket_bytes(net) == buckets
    assert backprop_batch_size(alone, TrainSection(), net) == (batch, predicted + buckets)
    ranked = plan()
    assert ranked.backprop_predicted_peak_bytes - buckets <= alone.backprop_predicted_peak_bytes
    assert ranked.backprop_batch_size < alone.backprop_batch_size  # the buckets took room from the batch


@pytest.mark.parametrize("visible, local_rank, per_rank_gpu, expected",
                         [(4, 1, "", "cuda:1"), (1, 1, "1", "cuda:0"), (1, 1, "", None), (2, 3, "", None)])
def test_each_torchrun_rank_trains_on_a_gpu_it_sees(monkeypatch, visible, local_rank, per_rank_gpu, expected):
    """LOCAL_RANK names the GPU, unless CUDA_VISIBLE_DEVICES shows the rank only its own; two ranks on a
    one-GPU machine are refused, not put on the same GPU."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", per_rank_gpu)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    if expected is None:
        with pytest.raises(InputError, match=f"LOCAL_RANK {local_rank} but this process sees {visible} CUDA"):
            dist.local_device(CUDA)
    else:
        assert dist.local_device(CUDA) == torch.device(expected)
