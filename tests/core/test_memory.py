"""The CPU allocation tracker against torch's own MemTracker, and the memory model."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from nfcompile.core.memory import LiveTensorBytes, PeakMeter, fit_memory
from nfcompile.learning import local_step, make_optimizer
from nfcompile.recipe.schema import TrainSection

from conftest import make_tiny_multi_exit


def test_live_tensor_bytes_counts_allocations_and_frees():
    with LiveTensorBytes() as tracker:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        b = torch.empty(500, dtype=torch.float64)  # 4000 bytes
        view = a[:10]  # a view shares a's storage: not counted again
        del a, view
        c = torch.empty(250, dtype=torch.float32)  # 1000 bytes, after a was freed
    assert tracker.peak == 8000
    assert tracker.current == 5000
    del b, c


def test_every_tensor_an_operator_returns_is_counted_whatever_the_container():
    """Operators return a tensor, a tuple (a named one too), a list, or (rarely) nested containers: the
    tracker reads the first three directly and must still see every tensor in each."""
    x = torch.zeros(8, 10)  # created before: not counted
    with LiveTensorBytes() as tracker:
        parts = torch.split(torch.ones(40), 10)  # ones: 160 bytes; the parts are views of it
        values, indices = torch.max(x, dim=1)  # a named tuple: 32 + 64 bytes
        summed = torch._foreach_add([x, x], 1.0)  # a list: 2 x 320 bytes
    assert tracker.peak == 160 + 32 + 64 + 2 * 320
    del parts, values, indices, summed
    assert tracker.current == 0


def test_peak_matches_torch_memtracker_on_a_training_step():
    from torch.distributed._tools.mem_tracker import MemTracker

    net = make_tiny_multi_exit()
    unit, head = net.units[1], net.heads["1"]
    section = TrainSection()
    peaks = {}
    for name in ("memtracker", "ours"):
        u, h = copy.deepcopy(unit), copy.deepcopy(head)
        optimizer = make_optimizer([*u.parameters(), *h.parameters()], section, 16)
        local_step(u, h, torch.randn(16, 8, 16, 16), torch.randint(0, 4, (16,)), optimizer)  # optimizer state
        x, y = torch.randn(16, 8, 16, 16), torch.randint(0, 4, (16,))
        if name == "memtracker":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tracker = MemTracker()
                tracker.track_external(u, h, optimizer)
                with tracker:
                    xs, ys = x.clone(), y.clone()
                    local_step(u, h, xs, ys, optimizer)
                    del xs, ys
                peaks[name] = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
        else:
            meter = PeakMeter(torch.device("cpu"), [u, h], [optimizer])
            with meter.step():
                xs, ys = x.clone(), y.clone()
                local_step(u, h, xs, ys, optimizer)
                del xs, ys
            peaks[name] = meter.reading.total
    assert peaks["ours"] == peaks["memtracker"]


def test_peak_meter_counts_resident_tensors():
    model = nn.Linear(10, 10)
    optimizer = make_optimizer(model.parameters(), TrainSection(), 8)
    resident = torch.empty(10_000)  # 40 kB that live through the step (an activation cache)
    plain, with_cache = (PeakMeter(torch.device("cpu"), [model], [optimizer], resident=r) for r in ([], [resident]))
    for meter in (plain, with_cache):
        with meter.step():
            model(torch.randn(8, 10)).sum().backward()
        model.zero_grad(set_to_none=True)  # gradients from one step must not count in the next
    assert with_cache.reading.total - plain.reading.total == 40_000


def test_fit_memory_is_exact_on_two_regimes():
    # A flat optimizer regime (1000 + 10 b) and a steep activation regime (100 + 100 b).
    truth = lambda b: max(1000 + 10 * b, 100 + 100 * b)
    fit = fit_memory([(b, truth(b)) for b in (2, 4, 50, 60)])
    for batch in (1, 3, 10, 40, 200):
        assert fit.predicted(batch) == truth(batch)
    assert fit.max_batch(budget=truth(70), cap=1000) == 70
    assert fit.max_batch(budget=truth(1) - 1, cap=1000) == 0
    assert fit.max_batch(budget=10**9, cap=64) == 64


def test_fit_memory_needs_two_batch_sizes():
    with pytest.raises(ValueError):
        fit_memory([(4, 100)])


def test_the_process_scan_leaves_out_traced_fake_tensors():
    """An exporter's trace can leave fake tensors alive (symbolic sizes, no memory): not counted."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from nfcompile.core.memory import live_tensors

    with FakeTensorMode():
        fake = torch.empty(1000)
    real = torch.empty(1000)
    found = live_tensors(torch.device("cpu"))
    assert any(t is real for t in found)
    assert not any(t is fake for t in found)


def test_a_training_scope_meter_sees_what_an_unfrozen_scan_sees_and_thaws_only_its_own_freeze():
    """The scope freezes what is alive when training begins, so the meters' scans skip it; what they
    count must not change: the network's tensors stay in, what was alive outside stays out."""
    import gc

    from nfcompile.core.memory import BlockMeter, training_scope

    cpu = torch.device("cpu")
    outside = torch.empty(50_000)  # a caller's tensor: not the training's
    network = nn.Linear(100, 100)  # 40,400 bytes of weights and bias
    caller_frozen = gc.get_freeze_count()

    def meter_reading() -> tuple[int, str]:
        made_inside = torch.empty(1000)  # 4,000 bytes the training holds
        with BlockMeter(cpu) as meter:
            pass
        del made_inside
        return meter.reading.peak, meter.reading.method

    with training_scope(cpu, [network]):
        assert gc.get_freeze_count() > caller_frozen  # the scans inside skip what was alive at the start
        frozen = meter_reading()
    assert gc.get_freeze_count() == caller_frozen
    gc.freeze()  # a caller that froze its own objects: nothing frozen or thawed for them
    try:
        count = gc.get_freeze_count()  # falls only as frozen objects are freed
        with training_scope(cpu, [network]):
            assert 0 < gc.get_freeze_count() <= count
            unfrozen = meter_reading()
        assert 0 < gc.get_freeze_count() <= count
    finally:
        gc.unfreeze()
    assert frozen[0] == unfrozen[0] == 40_400 + 4_000, (frozen, unfrozen)
    del outside


def test_overlapping_training_scopes_share_one_freeze_lifted_when_the_last_ends():
    """Scopes are per thread, the freeze per process: one ending must not thaw another's."""
    import gc

    from nfcompile.core.memory import training_scope

    cpu = torch.device("cpu")
    first, second = training_scope(cpu), training_scope(cpu)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_freeze_count() > 0  # the second still runs: its scans must keep skipping the same objects
    second.__exit__(None, None, None)
    assert gc.get_freeze_count() == 0
