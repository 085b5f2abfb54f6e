"""Logging and progress bars: standard `logging` underneath, rich on a terminal, stderr always.

Stdout is kept for results (tables, JSON), so `--json` output can be piped.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

stderr_console = Console(stderr=True)
_progress_enabled = True


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """-v for debug, -q for warnings only; progress bars only when stderr is a terminal."""
    global _progress_enabled
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = RichHandler(console=stderr_console, show_path=False, show_time=False,
                          markup=False, rich_tracebacks=False)
    root = logging.getLogger("nfcompile")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    _progress_enabled = not quiet and sys.stderr.isatty()
    # Third-party chatter (onnx exporters, onnxruntime) stays at warnings.
    for noisy in ("torch.onnx", "onnxscript", "onnx_ir", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def disable_progress() -> None:
    """No progress bars from this process (ranks other than 0 of a distributed run)."""
    global _progress_enabled
    _progress_enabled = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("nfcompile") else f"nfcompile.{name}")


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield ``advance(steps=1, **fields)``; fields (loss=…, acc=…) show beside the bar.

    Where stderr is not a terminal (CI logs, tests) nothing is drawn and the callable is a no-op,
    so loops never pay for rendering that nobody sees.
    """
    if not _progress_enabled:
        yield lambda steps=1, **fields: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=stderr_console, transient=True) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(steps: int = 1, **fields: object) -> None:
            status = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in fields.items())
            progress.update(task, advance=steps, status=status)

        yield advance
