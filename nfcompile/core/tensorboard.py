"""TensorBoard event files for a run (`torch.utils.tensorboard`).

One writer per build, opened by the pipeline around its stages and reached through a context
variable, so that the epoch loop and the stages log scalars without a writer threaded through every
training method. Outside a build (tests, the Python API's single stages) nothing is written.
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator, Mapping

TENSORBOARD_DIR = "tensorboard"

_writer: ContextVar[object | None] = ContextVar("nfcompile_tensorboard_writer", default=None)


@contextlib.contextmanager
def event_log(folder: Path | None) -> Iterator[None]:
    """Write the scalars logged inside this context to event files in ``folder`` (None: nowhere)."""
    if folder is None:
        yield
        return
    from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only where it is used

    writer = SummaryWriter(log_dir=str(folder), flush_secs=30)
    token = _writer.set(writer)
    try:
        yield
    finally:
        _writer.reset(token)
        writer.close()


def log_scalars(prefix: str, step: int, values: Mapping[str, float | int | None]) -> None:
    """``prefix/name`` = value at ``step`` for every finite value (None and NaN are left out)."""
    writer = _writer.get()
    if writer is None:
        return
    for name, value in values.items():
        if value is not None and math.isfinite(value):
            writer.add_scalar(f"{prefix}/{name}", float(value), step)


def logging_events() -> bool:
    return _writer.get() is not None
