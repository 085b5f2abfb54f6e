"""The data-parallel helpers without a process group: shards, the shard record, and the promise
that one process trains exactly as before (every helper hands back what it was given)."""

from __future__ import annotations

import pytest
import torch

from nfcompile.core import distributed as dist
from nfcompile.data.batches import shard_indices
from nfcompile.data.sources import ImageInput, ShardedInput
from nfcompile.learning import parallel
from nfcompile.stages.train.ranks import expand, progressions

from conftest import make_tiny_data


def test_shards_are_disjoint_and_cover_every_sample():
    for n in (4, 7, 64, 101):
        for world in (1, 2, 3, 4):
            shards = [shard_indices(n, r, world, pad=False).tolist() for r in range(world)]
            flat = [i for s in shards for i in s]
            assert sorted(flat) == list(range(n))  # covering, each sample once
            padded = [shard_indices(n, r, world, pad=True) for r in range(world)]
            assert len({len(s) for s in padded}) == 1  # equal step counts on every rank
            for r, s in enumerate(padded):
                assert set(s.tolist()) == set(shards[r])  # padding repeats the rank's own samples
    with pytest.raises(ValueError, match="cannot be shared"):
        shard_indices(1, 0, 2, pad=True)


def test_progressions_round_trip():
    for values in ([], [5], [0, 2, 4, 6], [1, 3, 4, 5, 9, 20, 21], list(range(0, 400, 2))):
        runs = progressions(torch.tensor(values, dtype=torch.int64))
        assert expand(runs) == values
    assert progressions(torch.arange(1, 400, 2)) == [[1, 400, 2]]


def test_a_sharded_source_reads_its_global_samples_and_notes_them():
    from nfcompile.data.batches import Augment

    data = make_tiny_data(train=10)
    source = ImageInput(data.train, data.preprocessing, Augment(), torch.device("cpu"))
    seen = torch.zeros(len(source), dtype=torch.bool)
    sharded = ShardedInput(source, shard_indices(len(source), 1, 2, pad=True), seen)
    assert len(sharded) == 5 and torch.equal(sharded.labels, data.train.labels[1::2])
    x, y = sharded.fetch(torch.tensor([0, 2]), None, train=True)
    ref_x, ref_y = source.fetch(torch.tensor([1, 5]), None, train=False)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    assert seen.nonzero().squeeze(1).tolist() == [1, 5]
    sharded.fetch(torch.tensor([1]), None, train=False)  # evaluation is not training
    assert seen.nonzero().squeeze(1).tolist() == [1, 5]


def test_one_process_changes_nothing(tiny_multi_exit, tiny_data):
    assert not dist.active() and dist.world_size() == 1 and dist.is_main()
    from nfcompile.data.batches import Augment

    source = ImageInput(tiny_data.train, tiny_data.preprocessing, Augment(), torch.device("cpu"))
    assert parallel.shard(source, train=True) is source
    assert parallel.global_batch(16) == 16 and parallel.shard_length(65) == 65
    generator_for = lambda epoch: torch.Generator()
    assert parallel.rank_generators(generator_for, 0, "block", 0) is generator_for
    unit = tiny_multi_exit.units[0]
    assert parallel.data_parallel(unit, torch.device("cpu")) is unit
    evaluate = lambda: [0.5]
    assert parallel.synced_evaluate(evaluate, [unit], source) is evaluate
    assert dist.broadcast_object({"a": 1}) == {"a": 1} and dist.gather_objects(3) == [3]
    assert dist.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    steps = parallel.LocalSteps([unit], [tiny_multi_exit.heads["0"]], torch.device("cpu"))
    assert steps.steps[0].func is parallel.local_step
    assert parallel.trained_indices() == {}
