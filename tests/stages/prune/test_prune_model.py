"""DRIVE and its baselines end to end on the tiny fixture: sparsity, enforced masks, export, size."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from conftest import TINY_SIZE, make_tiny_data, make_tiny_unit_net
from nfcompile.core.results import PruneResult
from nfcompile.recipe.schema import PruneSection, TrainSection
from nfcompile.runtime.onnx_io import export_onnx
from nfcompile.stages.prune import (compressed_size, global_masks, prunable_weights, prune_model, train_masked,
                                    weight_sparsity)

CPU = torch.device("cpu")
TRAIN = TrainSection(epochs=3, optimizer="adam", lr=0.01, batch_size=16, reference_batch_size=16)
SECTION = PruneSection(enabled=True, method="drive", sparsity=0.9, dense_epochs=1, rounds=2, finetune_epochs=1,
                       baselines=("magnitude", "snip", "synflow"))


@pytest.fixture(scope="module")
def pruned():
    data = make_tiny_data()
    model, result = prune_model(make_tiny_unit_net(seed=3), data, SECTION, TRAIN, device=CPU, seed=0,
                                synflow_iterations=20)
    return model, result, data


def test_every_method_reaches_the_target_sparsity(pruned):
    model, result, _ = pruned
    assert [o.method for o in (result.outcome, *result.baselines)] == ["drive", "magnitude", "snip", "synflow"]
    for outcome in (result.outcome, *result.baselines):
        assert outcome.sparsity_reached == pytest.approx(0.9, abs=0.01), outcome.method
        assert outcome.zero_weights / outcome.prunable_weights == outcome.sparsity_reached
        assert 0.0 <= outcome.accuracy <= 1.0 and outcome.seconds > 0
    zeros, total = weight_sparsity(model)
    assert zeros / total == result.outcome.sparsity_reached  # the returned model is the DRIVE one
    # Same budget for everyone (train.epochs: DRIVE prunes within it, after 1 dense epoch);
    # magnitude pruning retrains from the rewind point every round on top.
    budget = TRAIN.epochs
    assert {o.method: o.epochs for o in (result.outcome, *result.baselines)} == {
        "drive": budget, "snip": budget, "synflow": budget,
        "magnitude": budget + SECTION.rounds * (budget - SECTION.dense_epochs)}
    # Work: every epoch passes the 64 training images; DRIVE and SNIP score on them once a round,
    # SynFlow on one all-ones input per iteration (20 here).
    n = len(make_tiny_data().train)
    assert {o.method: o.samples_processed for o in (result.outcome, *result.baselines)} == {
        "drive": (budget + SECTION.rounds) * n, "snip": (budget + 1) * n, "synflow": budget * n + 20,
        "magnitude": (budget + SECTION.rounds * (budget - SECTION.dense_epochs)) * n}
    assert result.work_ratio("magnitude") == pytest.approx(7 / 5)
    assert result.seconds_ratio("magnitude") == result.baseline("magnitude").seconds / result.outcome.seconds
    assert result.seconds_ratio("magnitude", cpu=True) > 0
    assert PruneResult.from_dict(result.to_dict()) == result


def test_masks_stay_enforced_through_training():
    data = make_tiny_data()
    model = make_tiny_unit_net(seed=1)
    weights = prunable_weights(model)
    masks = global_masks({name: torch.rand(w.shape, generator=torch.Generator().manual_seed(i))
                          for i, (name, w) in enumerate(weights.items())}, 0.6)
    before = {name: w.detach().clone() for name, w in weights.items()}
    train_masked(model, masks, data, TRAIN, device=CPU, seed=0, epochs=range(2), total_epochs=2)
    for name, w in weights.items():
        assert torch.all(w[~masks[name]] == 0), name  # momentum and weight decay did not revive them
        assert not torch.equal(w[masks[name]], before[name][masks[name]]), name  # the rest trained


def test_pruning_is_deterministic_for_a_seed():
    data = make_tiny_data()
    section = SECTION.model_copy(update={"baselines": (), "rounds": 1})
    first, _ = prune_model(make_tiny_unit_net(seed=3), data, section, TRAIN, device=CPU, seed=7)
    second, _ = prune_model(make_tiny_unit_net(seed=3), data, section, TRAIN, device=CPU, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_pruned_model_exports_with_its_zeros_in_the_graph(pruned, tmp_path):
    model, _, data = pruned
    exported = export_onnx(model, tmp_path / "pruned.onnx", input_shape=(3, TINY_SIZE, TINY_SIZE),
                           exporter="dynamo", opset=18)
    graph = onnx.load(str(exported.path)).graph
    weights = [numpy_helper.to_array(init) for init in graph.initializer if len(init.dims) >= 2]
    zeros, total = weight_sparsity(model)
    assert sum(w.size for w in weights) == total
    assert sum(int((w == 0).sum()) for w in weights) == zeros
    x = torch.stack([data.preprocessing.normalize(img[None])[0] for img in data.test.images[:8]])
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    # The file is as large as a dense one, but its zeros deflate (dense float weights barely do).
    assert compressed_size(exported.path) < 0.5 * exported.bytes


def test_compressed_size_is_raw_deflate(tmp_path):
    import zlib

    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(1 << 16))
    zeros = tmp_path / "zeros.bin"
    zeros.write_bytes(bytes(1 << 16))
    assert compressed_size(noise) > (1 << 16)  # incompressible data only gains framing
    assert compressed_size(zeros) < 200
    assert compressed_size(noise) == len(zlib.compress(noise.read_bytes(), 9)) - 6  # zlib adds 6 bytes
