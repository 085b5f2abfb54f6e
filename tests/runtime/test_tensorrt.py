"""TensorRT runtime: skipped with its reason where tensorrt or CUDA is missing; built and run where present.

The `tensorrt`-marked tests run only where `import tensorrt` works and CUDA is available.
"""

from __future__ import annotations

import importlib.util

import pytest

from conftest import TINY_SIZE, make_tiny_data, make_tiny_multi_exit
from nfcompile.errors import InputError, StageSkipped
from nfcompile.runtime.compare import compare_runners
from nfcompile.runtime.onnx_io import export_onnx
from nfcompile.runtime.ort_runner import OrtRunner
from nfcompile.runtime.tensorrt import (TrtRunner, build_fingerprint, engine_from_onnx, fp16_onnx_from_fp32,
                                        tensorrt_unavailable_reason)

SAMPLE = (3, TINY_SIZE, TINY_SIZE)
PROFILE = {"min_shape": (1, *SAMPLE), "opt_shape": (4, *SAMPLE), "max_shape": (8, *SAMPLE),
           "workspace_bytes": 1 << 28}


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return export_onnx(make_tiny_multi_exit().exit_net(2), tmp_path_factory.mktemp("trt") / "model.onnx",
                       input_shape=SAMPLE, exporter="torchscript", opset=18).path


@pytest.fixture(scope="module")
def inputs():
    data = make_tiny_data()
    return data.preprocessing.normalize(data.test.images).numpy()


@pytest.fixture
def trt():
    module = pytest.importorskip("tensorrt", reason="tensorrt not installed")
    if tensorrt_unavailable_reason() is not None:
        pytest.skip(tensorrt_unavailable_reason())
    return module


def test_reason_names_the_missing_package():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    assert tensorrt_unavailable_reason() == "tensorrt not installed"


def test_everything_skips_with_the_reason_where_tensorrt_is_unavailable(tiny_onnx, tmp_path):
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("tensorrt and CUDA are available here")
    with pytest.raises(StageSkipped) as build:
        engine_from_onnx(tiny_onnx, tmp_path / "model.engine", precision="fp32", **PROFILE)
    with pytest.raises(StageSkipped) as run:
        TrtRunner(tmp_path / "model.engine").activate()
    with pytest.raises(StageSkipped) as fingerprint:
        build_fingerprint()
    assert build.value.reason == run.value.reason == fingerprint.value.reason == reason
    assert not (tmp_path / "model.engine").exists()


def test_fp16_graph_keeps_float32_inputs_and_outputs(tiny_onnx, inputs):
    pytest.importorskip("onnxconverter_common", reason="onnxconverter-common not installed")
    import onnx

    model = onnx.load(str(tiny_onnx))
    half = fp16_onnx_from_fp32(model)
    onnx.checker.check_model(half, full_check=True)
    assert {v.type.tensor_type.elem_type for v in [*half.graph.input, *half.graph.output]} == {onnx.TensorProto.FLOAT}
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in half.graph.initializer)
    c = compare_runners(OrtRunner(model.SerializeToString()), OrtRunner(half.SerializeToString()), inputs, None,
                        atol=1e-2, rtol=1e-2, batch_size=16)
    assert c.top1_agreement == 1.0 and c.max_abs_error < 1e-2


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_fp32_engine_is_a_plain_plan_that_matches_onnxruntime(trt, tiny_onnx, inputs, tmp_path):
    build = engine_from_onnx(tiny_onnx, tmp_path / "model.engine", precision="fp32",
                             timing_cache=tmp_path / "timing.cache", **PROFILE)
    assert build.bytes == (tmp_path / "model.engine").stat().st_size > 0
    assert build.fingerprint.tensorrt_version == trt.__version__
    assert build.profile == (PROFILE["min_shape"], PROFILE["opt_shape"], PROFILE["max_shape"])
    # No header: the file deserializes as it is.
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine((tmp_path / "model.engine").read_bytes()) is not None
    assert (tmp_path / "timing.cache").stat().st_size > 0
    with TrtRunner(build.path) as engine, OrtRunner(tiny_onnx) as ort:
        assert engine.batch_range == (1, 8)
        for batch in (1, 7):
            c = compare_runners(ort, engine, inputs[:batch], None, atol=1e-3, rtol=1e-3, batch_size=batch)
            assert c.within_tolerance == 1.0 and c.top1_agreement == 1.0
        with pytest.raises(InputError, match="outside the engine's optimization profile"):
            engine.infer({"input": inputs[:9]})


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_timing_cache_is_reused_by_a_second_build(trt, tiny_onnx, tmp_path):
    cache = tmp_path / "timing.cache"
    engine_from_onnx(tiny_onnx, tmp_path / "a.engine", precision="fp32", timing_cache=cache, **PROFILE)
    first = cache.read_bytes()
    second = engine_from_onnx(tiny_onnx, tmp_path / "b.engine", precision="fp32", timing_cache=cache, **PROFILE)
    assert second.timing_cache == cache and len(cache.read_bytes()) >= len(first)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_fp16_engine_agrees_on_top1(trt, tiny_onnx, inputs, tmp_path):
    build = engine_from_onnx(tiny_onnx, tmp_path / "model.engine", precision="fp16", **PROFILE)
    assert build.strongly_typed == (int(trt.__version__.split(".")[0]) >= 11)
    with TrtRunner(build.path) as engine, OrtRunner(tiny_onnx) as ort:
        c = compare_runners(ort, engine, inputs, None, atol=5e-2, rtol=1e-2, batch_size=8)
    assert c.top1_agreement >= 0.95 and c.max_abs_error < 5e-2


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_int8_needs_the_qdq_graph(trt, tiny_onnx, tmp_path):
    with pytest.raises(InputError, match="QDQ"):
        engine_from_onnx(tiny_onnx, tmp_path / "model.engine", precision="int8", **PROFILE)
    assert not (tmp_path / "model.engine").exists()
