"""score_exits on the tiny fixture model: every exit scored, numbers checked independently."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from conftest import TINY_SIZE, make_tiny_data, make_tiny_multi_exit
from torch import nn

from nfcompile.recipe.schema import BenchSection, ExportSection
from nfcompile.runtime import OrtRunner
from nfcompile.stages.score import score_exits
from nfcompile.stages.score.cost import count_macs

BENCH = BenchSection(warmup=1, repeats=3, batch_sizes=(1, 4))
FAST_EXPORT = ExportSection(exporter="torchscript")
CPU = torch.device("cpu")


def trained_tiny_net(steps: int = 40):
    """The fixture net after a few steps on its learnable data, so exits differ in accuracy."""
    torch.manual_seed(0)
    net, data = make_tiny_multi_exit(), make_tiny_data()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x = data.preprocessing.normalize(data.train.images)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(nn.functional.cross_entropy(logits, data.train.labels) for logits in net.forward_exits(x).values())
        loss.backward()
        optimizer.step()
    return net, data


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Exits 0 and 1 trained, the last unit not: the full model is exported on its own."""
    net, data = trained_tiny_net()
    net.train()
    out_dir = tmp_path_factory.mktemp("run")
    scores = score_exits(net, [1, 0], data.val, data.preprocessing, bench=BENCH, export=FAST_EXPORT,
                         out_dir=out_dir, device=CPU, test=data.test)
    return net, data, out_dir, scores


def test_every_trained_exit_and_the_full_model_are_scored(scored):
    net, data, _, scores = scored
    assert [s.name for s in scores.exits] == ["exit_00", "exit_01"]
    assert [s.unit for s in scores.exits] == [0, 1]
    assert scores.full_model.name == "full" and scores.full_model.unit == 2
    assert scores.full_model.accuracy is None  # its unit was not trained
    assert scores.full_model.onnx_file == "exits/full.onnx"
    assert scores.test_samples == len(data.test) and scores.val_samples == len(data.val)
    assert scores.batch_sizes == (1, 4)
    assert scores.full_model.test_accuracy is None
    for score in [*scores.exits, scores.full_model]:
        assert [lat.batch_size for lat in score.latency] == [1, 4]
        assert all(0 < lat.p50_ms <= lat.p90_ms for lat in score.latency)
        assert score.latency_source.startswith("measured: onnxruntime (CPUExecutionProvider)")
    assert all(m.training for m in net.modules()), "the caller's net keeps its mode, exports notwithstanding"


def test_accuracy_matches_a_direct_torch_computation(scored):
    net, data, _, scores = scored
    net.eval()
    with torch.no_grad():
        x = data.preprocessing.normalize(data.test.images)
        direct = {u: (net.exit_net(u)(x).argmax(1) == data.test.labels).float().mean().item() for u in (0, 1)}
    net.train()
    assert {s.unit: s.accuracy for s in scores.exits} == pytest.approx(direct, abs=1e-12)
    assert len({round(a, 6) for a in direct.values()} | {0.25}) > 1, "training moved accuracy off chance"


def test_paired_counts_are_the_validation_images_one_exit_gets_right_and_the_other_wrong(scored):
    net, data, _, scores = scored
    net.eval()
    with torch.no_grad():
        x = data.preprocessing.normalize(data.val.images)
        right = [(net.exit_net(s.unit)(x).argmax(1) == data.val.labels).tolist() for s in scores.exits]
    net.train()
    expected = [[sum(a and not b for a, b in zip(mine, other)) for other in right] for mine in right]
    assert [list(row) for row in scores.val_right_where_wrong] == expected
    assert sum(map(sum, expected)) > 0, "the exits disagree somewhere: the counts are not trivially zero"
    # With the accuracies they are one consistent record: differences match, and JSON keeps them.
    n = scores.val_samples
    assert (expected[0][1] - expected[1][0]) / n == pytest.approx(scores.exits[0].accuracy - scores.exits[1].accuracy)
    assert type(scores).from_dict(scores.to_dict()).val_right_where_wrong == scores.val_right_where_wrong


def _layer_params(*layers: tuple[str, int, int]) -> int:
    sizes = {"conv3x3": lambda i, o: i * o * 9, "bn": lambda i, o: 2 * o, "linear": lambda i, o: i * o + o}
    return sum(sizes[kind](i, o) for kind, i, o in layers)


def test_params_count_prefix_and_head_and_grow_with_depth(scored):
    _, _, _, scores = scored
    head = lambda c: [("conv3x3", c, 8), ("bn", 8, 8), ("linear", 8, 4)]  # noqa: E731
    trunk = [("conv3x3", 3, 8), ("bn", 8, 8), ("conv3x3", 8, 16), ("bn", 16, 16), ("conv3x3", 16, 32), ("bn", 32, 32)]
    expected = [_layer_params(*trunk[:2], *head(8)), _layer_params(*trunk[:4], *head(16)),
                _layer_params(*trunk, *head(32))]
    got = [s.params for s in [*scores.exits, scores.full_model]]
    assert got == expected
    assert got == sorted(got) and len(set(got)) == 3


def _hooked_macs(module: nn.Module, input_shape) -> int:
    """MACs from the layers' real output shapes: conv out * (in/groups * kh * kw), linear out * in."""
    total = 0

    def hook(layer, inputs, output):
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            total += output.numel() * layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            total += output.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module.eval()(torch.zeros(1, *input_shape))
    for handle in handles:
        handle.remove()
    return total


def test_macs_agree_with_a_count_from_layer_output_shapes(scored):
    net, _, _, scores = scored
    shape = (3, TINY_SIZE, TINY_SIZE)
    for score in [*scores.exits, scores.full_model]:
        assert score.macs == _hooked_macs(net.exit_net(score.unit), shape) > 0
    net.train()
    # The trunk grows with depth; a head on a large early map can cost as much as a deeper prefix.
    trunk = [count_macs(nn.Sequential(*net.units[: u + 1]), shape) for u in range(3)]
    assert trunk == sorted(trunk) and len(set(trunk)) == 3


def test_onnx_files_exist_match_their_size_and_hash_and_compute_the_exit(scored):
    net, data, out_dir, scores = scored
    x = data.preprocessing.normalize(data.test.images).numpy()
    for score in [*scores.exits, scores.full_model]:
        path = out_dir / score.onnx_file
        assert path.is_file()
        assert score.onnx_bytes == path.stat().st_size
        assert score.onnx_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        with OrtRunner(path) as runner:
            logits = runner.infer({runner.input_names[0]: x})[runner.output_names[0]]
        if score.accuracy is not None:  # the test split gives test_accuracy; selection's accuracy is validation's
            assert np.mean(logits.argmax(1) == data.test.labels.numpy()) == pytest.approx(score.test_accuracy)
            x_val = data.preprocessing.normalize(data.val.images).numpy()
            with OrtRunner(path) as runner:
                val_logits = runner.infer({runner.input_names[0]: x_val})[runner.output_names[0]]
            assert np.mean(val_logits.argmax(1) == data.val.labels.numpy()) == pytest.approx(score.accuracy)
    assert len({s.onnx_sha256 for s in [*scores.exits, scores.full_model]}) == 3


def test_scoring_again_gives_the_same_deterministic_figures(scored, tmp_path):
    net, data, _, first = scored
    again = score_exits(net, [0, 1], data.val, data.preprocessing, bench=BENCH, export=FAST_EXPORT,
                        out_dir=tmp_path, device=CPU, test=data.test)
    fixed = lambda s: (s.name, s.accuracy, s.test_accuracy, s.params, s.macs, s.onnx_bytes, s.onnx_sha256)  # noqa: E731
    assert [fixed(s) for s in again.exits] == [fixed(s) for s in first.exits]
    assert fixed(again.full_model) == fixed(first.full_model)


def test_a_trained_last_unit_makes_the_last_exit_the_full_model(tmp_path):
    net, data = trained_tiny_net(steps=5)
    scores = score_exits(net, [2], data.val, data.preprocessing, bench=BENCH,
                         export=ExportSection(exporter="dynamo"), out_dir=tmp_path, device=CPU, test=data.test)
    (last,) = scores.exits
    assert dataclasses.replace(scores.full_model, name=last.name) == last
    assert scores.full_model.accuracy is not None
    assert sorted(p.name for p in (tmp_path / "exits").iterdir()) == ["exit_02.onnx"]


def test_an_exit_unit_without_a_head_is_refused(tmp_path):
    net, data = make_tiny_multi_exit(), make_tiny_data()
    with pytest.raises(ValueError, match="must carry heads"):
        score_exits(net, [0, 7], data.test, data.preprocessing, bench=BENCH, export=FAST_EXPORT,
                    out_dir=tmp_path, device=CPU)


def test_exit_graphs_are_simplified_as_the_deliverable_is(scored):
    """Each timed graph is the onnxsim-simplified one: no BatchNormalization left (folded into the convs)."""
    import onnx

    _, _, out_dir, scores = scored
    for score in [*scores.exits, scores.full_model]:
        ops = {node.op_type for node in onnx.load(str(out_dir / score.onnx_file)).graph.node}
        assert "Conv" in ops and "BatchNormalization" not in ops


def test_exits_are_timed_interleaved_with_the_machine_load_recorded(scored):
    _, _, _, scores = scored
    assert "round-robin rounds across 3 model(s)" in scores.timing
    assert scores.load is not None and scores.load.cpu_count >= 1 and len(scores.load.load_average) == 3
    assert scores.load.loaded == (scores.load.other_cpu_percent >= 50.0)


def test_int8_latency_of_every_exit_with_a_quantizer(tmp_path):
    net, data = trained_tiny_net(steps=5)
    made = []

    def quantizer(onnx_path, folder):
        from nfcompile.recipe.schema import QuantizeSection
        from nfcompile.stages.quantize import quantize_int8

        made.append(onnx_path.name)
        x = data.preprocessing.normalize(data.train.images).numpy()
        return folder / quantize_int8(onnx_path, QuantizeSection(calibration_samples=16), calibration_inputs=x,
                                      out_dir=folder).path

    scores = score_exits(net, [1, 2], data.val, data.preprocessing, bench=BENCH, export=FAST_EXPORT,
                         out_dir=tmp_path, device=CPU, test=data.test, quantizer=quantizer)
    assert made == ["exit_01.onnx", "exit_02.onnx"]
    for score in scores.exits:
        assert (tmp_path / score.int8_file).is_file()
        assert [lat.batch_size for lat in score.int8_latency] == [1, 4]
        assert score.latency_at(4, "int8") is score.int8_latency[1]
