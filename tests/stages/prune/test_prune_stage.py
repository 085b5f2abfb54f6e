"""The prune stage on a trained multi-exit net: a copy is pruned, written, sized and read back."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_data, make_tiny_multi_exit
from nfcompile.errors import InputError
from nfcompile.recipe.schema import ExportSection, PruneSection, TrainSection
from nfcompile.stages.prune import prune_chosen_exit, pruned_exit_from_checkpoint, weight_sparsity


def test_prune_chosen_exit_writes_a_checkpoint_the_export_stage_reads_back(tmp_path):
    net = make_tiny_multi_exit().eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    section = PruneSection(enabled=True, sparsity=0.8, dense_epochs=1, rounds=1, finetune_epochs=1)
    train = TrainSection(epochs=2, optimizer="adam", lr=0.01, batch_size=16, reference_batch_size=16)
    result = prune_chosen_exit(net, 1, make_tiny_data(), section, train, device=torch.device("cpu"), seed=0,
                               out_dir=tmp_path, export=ExportSection(exporter="torchscript"))
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # the trained net is untouched
    assert result.checkpoint == "pruned_exit.pt" and (tmp_path / result.checkpoint).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned_exit.pt"]  # the sizing exports are gone
    assert result.compressed_bytes < result.dense_compressed_bytes
    exit_net = pruned_exit_from_checkpoint(tmp_path / result.checkpoint, net, 1)
    zeros, total = weight_sparsity(exit_net)
    assert zeros / total == pytest.approx(0.8, abs=0.01) == result.outcome.sparsity_reached
    assert len(exit_net.units) == 2 and exit_net.head is not net.heads["1"]
    with pytest.raises(InputError, match="chosen exit is at unit 2"):
        pruned_exit_from_checkpoint(tmp_path / result.checkpoint, net, 2)
