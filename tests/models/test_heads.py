"""Auxiliary heads: pooling split from the convs, and slim copies (neuroflux.slim_heads)."""

from __future__ import annotations

import pytest
import torch

from nfcompile.models import AuxHead, attach_heads, build_unit_net, multi_exit_from_state, multi_exit_state
from nfcompile.models.build import head_specs, match_head_specs
from nfcompile.models.heads import slim_head
from nfcompile.recipe.schema import ModelSection

from models.conftest import scramble_norms


@pytest.mark.parametrize("pool, depth", [(1, 1), (2, 2), (3, 3)])
def test_a_head_is_its_pooling_then_the_rest(pool, depth):
    torch.manual_seed(0)
    head = scramble_norms(AuxHead(6, 8, 5, pool=pool, depth=depth), seed=1).eval()
    x = torch.randn(4, 6, 7, 7)
    assert torch.equal(head.from_pooled(head.pooled_input(x)), head(x))
    assert head.pooled_input(x).shape[-1] == -(-7 // pool)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_slim_head_keeps_the_filters_with_the_largest_batchnorm_scales(depth):
    """Filters whose BatchNorm scale and shift are zero send nothing on (ReLU(0) = 0): a slim head of the
    others computes exactly what the wide one does. Random scales elsewhere, so any other choice of
    filters, or a next layer's inputs not matched to them, changes the output."""
    torch.manual_seed(0)
    head = scramble_norms(AuxHead(6, 8, 5, pool=2, depth=depth), seed=2)
    # Other dead filters in every layer: a later conv's inputs must follow the layer before's choice.
    dead_per_layer = ([0, 3, 4, 6], [1, 2, 5, 7], [0, 1, 2, 3])
    with torch.no_grad():
        for norm, dead in zip((m for m in head.body if isinstance(m, torch.nn.BatchNorm2d)), dead_per_layer):
            live = [f for f in range(8) if f not in dead]
            norm.weight[dead] = 0.0
            norm.bias[dead] = 0.0
            norm.weight[live[0]] = -norm.weight[live[0]]  # a negative scale counts by its magnitude
    head.eval()
    slim = slim_head(head, 4)
    assert (slim.filters, slim.pool_kernel, slim.depth, slim.training) == (4, 2, depth, False)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in head.parameters())
    x = torch.randn(3, 6, 8, 8)
    torch.testing.assert_close(slim(x), head(x))
    # One live filter fewer: no longer the same function.
    assert not torch.allclose(slim_head(head, 3)(x), head(x), atol=1e-4)
    with pytest.raises(ValueError, match="1 to 8 filters"):
        slim_head(head, 9)


def test_a_checkpoint_with_slim_heads_loads_into_a_net_built_with_the_wide_ones(tmp_path):
    section = ModelSection(arch="resnet18", width=0.25, small_input=True)
    torch.manual_seed(0)
    net = attach_heads(build_unit_net(section, 10), {str(u): {"kind": "aux", "filters": 16, "pool": 2, "depth": 2}
                                                    for u in range(3)}, 10)
    net.heads["1"] = slim_head(scramble_norms(net.heads["1"], seed=3), 8)
    state = multi_exit_state(net.eval(), section, 10)
    assert head_specs(net)["1"]["filters"] == 8

    fresh = attach_heads(build_unit_net(section, 10), {str(u): {"kind": "aux", "filters": 16, "pool": 2, "depth": 2}
                                                      for u in range(3)}, 10)
    match_head_specs(fresh, state["heads"])
    fresh.load_state_dict(state["state_dict"])
    rebuilt = multi_exit_from_state(state)
    x = torch.randn(2, 3, 16, 16)
    for other in (fresh.eval(), rebuilt.eval()):
        assert [h.filters for h in other.heads.values()] == [16, 8, 16]
        for unit in range(3):
            torch.testing.assert_close(other.exit_net(unit)(x), net.exit_net(unit)(x))
