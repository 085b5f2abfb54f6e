"""ONNX Runtime runner: CPU always; CUDA where its provider works, else skipped with the reason."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import TINY_SIZE, make_tiny_multi_exit
from nfcompile.errors import StageSkipped
from nfcompile.runtime.onnx_io import export_onnx
from nfcompile.runtime.ort_runner import OrtRunner


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return export_onnx(make_tiny_multi_exit().exit_net(2), tmp_path_factory.mktemp("ort") / "m.onnx",
                       input_shape=(3, TINY_SIZE, TINY_SIZE), exporter="torchscript", opset=18).path


def cuda_provider_usable() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def test_cuda_runner_is_skipped_with_the_reason_where_the_provider_is_missing(tiny_onnx):
    if cuda_provider_usable():
        pytest.skip("onnxruntime here has a CUDA provider: see the GPU test")
    with pytest.raises(StageSkipped, match="no CUDAExecutionProvider") as info:
        OrtRunner(tiny_onnx, device="cuda").activate()
    assert "available:" in info.value.reason


@pytest.mark.gpu
def test_cuda_runner_matches_cpu(tiny_onnx):
    if not cuda_provider_usable():
        pytest.skip("onnxruntime here has no CUDAExecutionProvider")
    x = np.random.default_rng(0).standard_normal((5, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    try:
        with OrtRunner(tiny_onnx, device="cuda") as gpu, OrtRunner(tiny_onnx) as cpu:
            np.testing.assert_allclose(gpu.infer({"input": x})["logits"], cpu.infer({"input": x})["logits"],
                                       atol=1e-3, rtol=1e-3)
    except StageSkipped as skipped:  # listed, but its CUDA libraries do not load
        pytest.skip(skipped.reason)


def test_workers_stop_spinning_when_a_run_returns(tmp_path):
    # Interleaved timing relies on it: a session whose workers spin on after its run steals the cores
    # of the next session timed. Idle means no CPU time in this process while it sleeps.
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.Conv2d(64, 64, 3, padding=1))
    path = export_onnx(module, tmp_path / "conv.onnx", input_shape=(3, 32, 32), exporter="torchscript",
                       opset=18).path
    x = np.zeros((8, 3, 32, 32), dtype=np.float32)
    with OrtRunner(path, threads=2) as runner:
        for _ in range(3):
            runner.infer({runner.input_names[0]: x})
        cpu_before = time.process_time()
        time.sleep(0.2)
        idle_cpu = time.process_time() - cpu_before
    assert idle_cpu < 0.02, f"{idle_cpu * 1e3:.0f} ms of CPU in 200 ms after the last run"
