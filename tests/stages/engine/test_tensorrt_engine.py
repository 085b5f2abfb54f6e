"""build_engine: skipped with the reason where TensorRT or CUDA is missing, a plan where both are present."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import TINY_SIZE, make_tiny_multi_exit
from nfcompile.core.io import sha256_file
from nfcompile.errors import RecipeError, StageSkipped
from nfcompile.recipe.schema import TensorRTSection
from nfcompile.runtime.onnx_io import export_onnx
from nfcompile.runtime.tensorrt import tensorrt_unavailable_reason
from nfcompile.stages.engine import build_engine

SECTION = TensorRTSection(precision="fp16", min_batch=1, opt_batch=4, max_batch=8, workspace="256MiB")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return export_onnx(make_tiny_multi_exit().exit_net(2), tmp_path_factory.mktemp("engine") / "model.onnx",
                       input_shape=(3, TINY_SIZE, TINY_SIZE), exporter="torchscript", opset=18).path


@pytest.fixture
def tensorrt_here():
    pytest.importorskip("tensorrt", reason="tensorrt not installed")
    if tensorrt_unavailable_reason() is not None:
        pytest.skip(tensorrt_unavailable_reason())


def test_stage_reports_skipped_with_the_reason(tiny_onnx, tmp_path):
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("tensorrt and CUDA are available here: the stage builds")
    with pytest.raises(StageSkipped) as skipped:
        build_engine(tiny_onnx, None, SECTION, out_dir=tmp_path)
    assert skipped.value.reason == reason
    if importlib.util.find_spec("tensorrt") is None:
        assert skipped.value.reason == "tensorrt not installed"
    assert list(tmp_path.iterdir()) == []  # a skip writes nothing


def test_disabled_stage_is_skipped(tiny_onnx, tmp_path):
    with pytest.raises(StageSkipped, match="tensorrt.enabled: false"):
        build_engine(tiny_onnx, None, TensorRTSection(enabled=False), out_dir=tmp_path)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_fp16_engine_and_its_record(tensorrt_here, tiny_onnx, tmp_path):
    result = build_engine(tiny_onnx, None, SECTION, out_dir=tmp_path)
    assert result.path == "model.engine" and result.source == "model.onnx" and result.precision == "fp16"
    assert result.sha256 == sha256_file(tmp_path / "model.engine")
    assert result.profile == ((1, 3, TINY_SIZE, TINY_SIZE), (4, 3, TINY_SIZE, TINY_SIZE), (8, 3, TINY_SIZE, TINY_SIZE))
    assert result.timing_cache == "timing.cache" and (tmp_path / "timing.cache").stat().st_size > 0
    assert result.gpu and result.compute_capability and result.tensorrt_version


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_int8_without_a_qdq_model_names_the_field(tensorrt_here, tiny_onnx, tmp_path):
    with pytest.raises(RecipeError, match="tensorrt.precision"):
        build_engine(tiny_onnx, None, TensorRTSection(precision="int8"), out_dir=tmp_path)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_recipe_timing_cache_is_read_not_written(tensorrt_here, tiny_onnx, tmp_path):
    first = tmp_path / "first"
    build_engine(tiny_onnx, None, SECTION, out_dir=first)
    seed = tmp_path / "seed.cache"
    seed.write_bytes((first / "timing.cache").read_bytes())
    before = sha256_file(seed)
    second = tmp_path / "second"
    build_engine(tiny_onnx, None, SECTION.model_copy(update={"timing_cache": seed}), out_dir=second)
    assert sha256_file(seed) == before and (second / "timing.cache").exists()


def test_an_int8_engine_refuses_a_qdq_model_made_for_onnx_runtime_on_any_machine(tiny_onnx, tmp_path):
    import numpy as np

    from nfcompile.errors import InputError
    from nfcompile.recipe.schema import QuantizeSection
    from nfcompile.stages.quantize import quantize_int8

    samples = np.random.default_rng(0).standard_normal((16, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    uint8 = quantize_int8(tiny_onnx, QuantizeSection(calibration_samples=16), calibration_inputs=samples,
                          out_dir=tmp_path / "uint8", activations="uint8")
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    with pytest.raises(InputError, match="not a TensorRT INT8 model") as refused:
        build_engine(tiny_onnx, tmp_path / "uint8" / uint8.path, TensorRTSection(precision="int8"), out_dir=engine_dir)
    assert "quantize.activations: int8" in refused.value.hint
    assert list(engine_dir.iterdir()) == []
