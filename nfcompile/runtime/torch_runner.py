"""The PyTorch reference: what every exported format is compared against."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nfcompile.runtime.base import Runner


class TorchRunner(Runner):
    def __init__(self, module: nn.Module, *, device: str | torch.device = "cpu",
                 input_name: str = "input", output_name: str = "logits"):
        super().__init__()
        self.module = module
        self.device = torch.device(device)
        self._input_name = input_name
        self._output_name = output_name
        self.name = f"pytorch ({self.device.type})"

    @property
    def input_names(self) -> list[str]:
        return [self._input_name]

    @property
    def output_names(self) -> list[str]:
        return [self._output_name]

    def activate_impl(self) -> None:
        self.module.eval().to(self.device)

    @torch.inference_mode()
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(feed[self._input_name])).to(self.device)
        return {self._output_name: self.module(x).float().cpu().numpy()}
