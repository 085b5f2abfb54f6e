"""Timing exits: warm-up is excluded, exits of very different cost keep their order, missing
backends are refused before any work."""

from __future__ import annotations

import sys
import time
import types

import pytest
import torch
from conftest import make_tiny_data, make_tiny_multi_exit
from torch import nn

from nfcompile.errors import InputError
from nfcompile.recipe.schema import BenchSection, ExportSection, TensorRTSection
from nfcompile.runtime import OrtRunner
from nfcompile.runtime.onnx_io import export_onnx
from nfcompile.stages.score import score_exits, timing
from nfcompile.stages.score.cost import count_macs

SHAPE = (3, 32, 32)


def _cheap() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(4, 4))


def _costly() -> nn.Module:
    layers = [nn.Conv2d(3, 64, 3, padding=1), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(64, 4))


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timing")
    torch.manual_seed(0)
    modules = {"cheap": _cheap(), "costly": _costly()}
    paths = {name: export_onnx(m, folder / f"{name}.onnx", input_shape=SHAPE, exporter="torchscript", opset=18).path
             for name, m in modules.items()}
    return modules, paths


def test_exits_of_very_different_cost_keep_their_latency_order(onnx_pair):
    modules, paths = onnx_pair
    macs = {name: count_macs(m, SHAPE) for name, m in modules.items()}
    assert macs["costly"] >= 1000 * macs["cheap"], "the premise: far more work, not a close call"
    bench = BenchSection(warmup=3, repeats=15, batch_sizes=(1, 4), threads=1)
    # p50 over 15 runs shrugs off a few runs stolen by other processes on a busy 2-core machine.
    timings = {name: timing.time_onnx(path, SHAPE, bench) for name, path in paths.items()}
    for cheap, costly in zip(timings["cheap"].latency, timings["costly"].latency):
        assert cheap.batch_size == costly.batch_size
        assert costly.p50_ms > 3 * cheap.p50_ms, (cheap, costly)
    assert "1 threads, 3 warm-up + 15 timed runs" in timings["cheap"].source


class _SlowStart(OrtRunner):
    """An ONNX Runtime runner whose first calls are slow, like a cold cache or lazy allocation."""

    cold_calls, cold_seconds = 3, 0.04

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def infer_impl(self, feed):
        self.calls += 1
        if self.calls <= self.cold_calls:
            time.sleep(self.cold_seconds)
        return super().infer_impl(feed)


@pytest.mark.parametrize("warmup", [0, _SlowStart.cold_calls])
def test_warm_up_runs_are_not_timed(onnx_pair, monkeypatch, warmup):
    monkeypatch.setattr("nfcompile.runtime.ort_runner.OrtRunner", _SlowStart)  # what the ort-cpu backend runs
    bench = BenchSection(warmup=warmup, repeats=5, batch_sizes=(1,))
    (latency,) = timing.time_onnx(onnx_pair[1]["cheap"], SHAPE, bench).latency
    assert (latency.warmup, latency.runs) == (warmup, 5)
    cold_ms = _SlowStart.cold_seconds * 1e3
    if warmup:  # every cold call was spent warming up
        assert latency.p90_ms < cold_ms / 2
    else:  # three of five timed runs were cold: the median is one of them
        assert latency.p50_ms >= cold_ms


def test_tensorrt_missing_is_refused_before_any_export(tmp_path, monkeypatch):
    fake = types.ModuleType("nfcompile.runtime.tensorrt")
    fake.tensorrt_unavailable_reason = lambda: "tensorrt not installed"
    monkeypatch.setitem(sys.modules, "nfcompile.runtime.tensorrt", fake)
    monkeypatch.setattr("nfcompile.runtime.tensorrt", fake, raising=False)
    data = make_tiny_data()
    with pytest.raises(InputError) as caught:
        score_exits(make_tiny_multi_exit(), [0], data.test, data.preprocessing,
                    bench=BenchSection(backend="tensorrt"), export=ExportSection(), out_dir=tmp_path,
                    device=torch.device("cpu"), tensorrt=TensorRTSection())
    text = str(caught.value)
    assert "bench.backend 'tensorrt'" in text and "tensorrt not installed" in text
    assert "ort-cpu" in text and "bench.table" in text
    assert not (tmp_path / "exits").exists()


def test_onnxruntime_without_cuda_refuses_ort_cuda(tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing to refuse")
    data = make_tiny_data()
    with pytest.raises(InputError, match="bench.backend 'ort-cuda'.*CUDAExecutionProvider"):
        score_exits(make_tiny_multi_exit(), [0], data.test, data.preprocessing,
                    bench=BenchSection(backend="ort-cuda"), export=ExportSection(), out_dir=tmp_path,
                    device=torch.device("cpu"))


def test_tensorrt_timing_builds_an_engine_per_exit_with_a_profile_covering_every_batch(onnx_pair, tmp_path,
                                                                                      monkeypatch):
    """TensorRT is not on this machine: a stand-in records the build request and runs the ONNX."""
    builds = []

    def engine_from_onnx(onnx_path, engine_path, **options):
        builds.append(options)
        engine_path.write_bytes(onnx_path.read_bytes())

    fake = types.ModuleType("nfcompile.runtime.tensorrt")
    fake.tensorrt_unavailable_reason = lambda: None
    fake.engine_from_onnx = engine_from_onnx
    fake.TrtRunner = lambda path: OrtRunner(path)
    monkeypatch.setitem(sys.modules, "nfcompile.runtime.tensorrt", fake)
    monkeypatch.setattr("nfcompile.runtime.tensorrt", fake, raising=False)
    recipe_cache = tmp_path / "recipe.cache"
    recipe_cache.write_bytes(b"timings")
    section = TensorRTSection(precision="int8", min_batch=2, opt_batch=8, max_batch=16, timing_cache=recipe_cache)
    bench = BenchSection(backend="tensorrt", warmup=1, repeats=3, batch_sizes=(1, 32))
    result = timing.time_onnx(onnx_pair[1]["cheap"], SHAPE, bench, tensorrt=section, engine_dir=tmp_path / "engines")
    (options,) = builds
    assert options["precision"] == "fp16"  # exits have no calibrated QDQ model
    assert (options["min_shape"], options["opt_shape"], options["max_shape"]) == ((1, *SHAPE), (8, *SHAPE),
                                                                                  (32, *SHAPE))
    assert options["timing_cache"] == tmp_path / "engines" / "timing.cache" != recipe_cache
    assert options["timing_cache"].read_bytes() == b"timings"  # seeded from the recipe's, which stays read only
    assert [lat.batch_size for lat in result.latency] == [1, 32]
    assert "TensorRT fp16 engine, profile batch 1..8..32 (recipe asks int8" in result.source
