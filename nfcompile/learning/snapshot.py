"""The best epoch's weights, kept where they do not count against the training device's budget.

CUDA: a copy in host RAM. CPU: the host RAM *is* the training device, so the copy goes to a hidden
file in the run folder (deleted when the block ends) and is read back only at the end. Either way a
block's snapshot never takes room from its batch size.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from nfcompile.core.memory import memory_phase


class BestWeights:
    def __init__(self, modules: Sequence[nn.Module], device: torch.device, folder: Path | None = None):
        self.modules = list(modules)
        self.on_disk = device.type == "cpu"
        if self.on_disk and folder is None:
            raise ValueError("a CPU snapshot needs a folder")
        # Hidden: scratch, so a run killed mid-block leaves nothing the next run would bundle.
        self.path = Path(folder) / f".snapshot-{secrets.token_hex(4)}.pt" if self.on_disk else None
        self._host: list[dict[str, torch.Tensor]] | None = None
        self.saved = False

    @property
    def where(self) -> str:
        return "a file in the run folder (CPU: host RAM is the training device)" if self.on_disk else "host RAM"

    def keep(self) -> None:
        with memory_phase("best-epoch snapshot"), torch.no_grad():
            if self.on_disk:  # streamed to the file: no second copy in memory
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(self.path.name + ".tmp")
                torch.save([m.state_dict() for m in self.modules], tmp)
                os.replace(tmp, self.path)
            else:
                self._host = [{k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}
                              for m in self.modules]
        self.saved = True

    def restore(self) -> None:
        if not self.saved:
            return
        with memory_phase("best-epoch snapshot"):
            # Memory-mapped: the weights are copied from the file's pages, never read into a second buffer.
            states = torch.load(self.path, weights_only=True, mmap=True) if self.on_disk else self._host
            for module, state in zip(self.modules, states):
                module.load_state_dict(state)
            del states
        self.close()

    def close(self) -> None:
        self._host = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
