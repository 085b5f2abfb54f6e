"""ONNX Runtime: the portable deployment runtime (CPU, or CUDA where its provider is present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfcompile.errors import StageSkipped
from nfcompile.runtime.base import Runner

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

# After a run, ONNX Runtime's intra-op workers keep spinning on their cores, waiting for the next run
# (about 0.1 CPU-s in the next 0.2 s on a 2-core Xeon). Timing several sessions in interleaved rounds,
# each one's spinning workers took the cores the next one needed: quickstart exits timed up to 2.4x too
# slow at batch 32, out of depth order, p90 up to 8x p50. Workers still spin within a run and stop when
# it returns, as a deployed model's do between requests that arrive apart. A documented session key.
STOP_SPINNING_AFTER_RUN = ("session.force_spinning_stop", "1")


def ort_providers(device: str) -> list[str]:
    """Providers for 'cpu' or 'cuda'; CUDA where the installed onnxruntime lacks it is a skip."""
    import onnxruntime as ort

    wanted = PROVIDERS[device]
    if wanted not in ort.get_available_providers():
        raise StageSkipped(f"onnxruntime {ort.__version__} here has no {wanted} "
                           f"(available: {', '.join(ort.get_available_providers())})")
    return [wanted] if device == "cpu" else [wanted, PROVIDERS["cpu"]]


class OrtRunner(Runner):
    def __init__(self, model: str | Path | bytes, *, device: str = "cpu", threads: int | None = None):
        super().__init__()
        self.model = str(model) if isinstance(model, Path) else model
        self.device = device
        self.threads = threads
        self.session = None
        self.name = f"onnxruntime ({PROVIDERS[device]})"

    def activate_impl(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.add_session_config_entry(*STOP_SPINNING_AFTER_RUN)
        session = ort.InferenceSession(self.model, sess_options=options, providers=ort_providers(self.device))
        wanted = PROVIDERS[self.device]
        if wanted not in session.get_providers():
            # Listed but not loadable (CUDA/cuDNN libraries missing): onnxruntime falls back to the CPU
            # with only a warning, and every figure would be labelled with the wrong device.
            raise StageSkipped(f"onnxruntime {ort.__version__} lists {wanted} but could not start it "
                               f"(running on: {', '.join(session.get_providers())})")
        self.session = session

    def deactivate_impl(self) -> None:
        self.session = None

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._session().get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._session().get_outputs()]

    def _session(self):
        if self.session is None:
            raise RuntimeError(f"{self.name}: not active")
        return self.session

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session().run(None, feed)
        return dict(zip(self.output_names, outputs))
