"""Shared by the reliability tests: the recipe they build, the CLI run in-process or as a real process,
what every failure must look like (one `error:` line, its exit code, no half-written bundle), a
partial run made from a finished bundle, and a disk that fills up."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from typing import Callable

import pytest
import yaml

import nfcompile.core.io
# Writers that import atomic_path by name: loaded now, so that fill_disk_at finds and patches them.
import nfcompile.runtime.onnx_io
import nfcompile.stages.export.onnx
import nfcompile.stages.quantize.qdq
from nfcompile.cli import main
from nfcompile.core import log
from nfcompile.pipeline import STAGE_NAMES
from nfcompile.runs import PARTIAL_SUFFIX, STATE_DIR

from conftest import TINY_DIGITS_RECIPE

RECIPE_NAME = "rel-digits"


def reliability_recipe() -> str:
    """The tiny digits recipe of the end-to-end tests, adjusted for these ones."""
    raw = yaml.safe_load(TINY_DIGITS_RECIPE)
    raw["name"] = RECIPE_NAME
    # TorchScript exports the nine exits in about a second, dynamo in about twenty: several builds
    # and resumes fit the time a test suite may take on two cores.
    raw["export"] = {"exporter": "torchscript"}
    # Host RAM "short": every activation cache spills to a memory-mapped file on disk.
    raw["train"]["neuroflux"]["cache"] = {"max_host_bytes": "1KiB"}
    return yaml.safe_dump(raw, sort_keys=False)


# --------------------------------------------------------------------------- running the CLI


def cli_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`nfcompile ARGS` in this process (what the console script runs): exit code, stdout, stderr.

    Warnings reach stderr as they would in a process of its own (pytest would record them instead),
    so a library's warning printed beside the error line is seen here too.
    """
    monkeypatch.setattr(sys, "argv", ["nfcompile", *args])
    logger = logging.getLogger("nfcompile")
    saved = (logger.handlers[:], logger.level, logger.propagate, log._progress_enabled)
    try:
        with warnings.catch_warnings(), pytest.raises(SystemExit) as info:
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)  # the interpreter's defaults
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
                sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
            main()
    finally:  # the CLI pointed the `nfcompile` logger at its console: give the other tests theirs back
        logger.handlers[:], level, logger.propagate, log._progress_enabled = saved
        logger.setLevel(level)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def cli_env() -> dict[str, str]:
    # One OpenMP thread, as in tests/conftest.py `run_cli`.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def start_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """A real `python -m nfcompile` process, not waited for (to kill it, or to run two at once)."""
    return subprocess.Popen([sys.executable, "-m", "nfcompile", *args], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# prctl(2) and capabilities(7): drop a capability from the bounding set; the two that let root read
# and write through any file mode.
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
CANNOT_DROP = 97  # the child's exit status when it could not give the capabilities up


def _without_permission_override() -> None:
    """Runs in the child before exec: root gives up reading and writing through any chmod."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            os._exit(CANNOT_DROP)


def run_cli_unprivileged(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI bound by file permissions. A test run as root would otherwise test nothing: root
    reads and writes through any chmod, so there the child drops those two capabilities first."""
    result = subprocess.run([sys.executable, "-m", "nfcompile", *args], cwd=cwd, env=cli_env(), capture_output=True,
                            text=True, timeout=timeout,
                            preexec_fn=_without_permission_override if os.geteuid() == 0 else None)
    if result.returncode == CANNOT_DROP:
        pytest.skip("running as root without CAP_SETPCAP: cannot give up the permission override")
    return result


def error_line(err: str) -> str:
    """A `-q` command's whole stderr: exactly one `error:` line, no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------- run folders


def run_folders(out: Path) -> list[Path]:
    """Every run folder under an --out folder: <out>/<recipe>/<run-id>[.partial]."""
    if not out.is_dir():
        return []
    return sorted(run for recipe in out.iterdir() if recipe.is_dir() for run in recipe.iterdir())


def assert_no_half_written_bundle(out: Path, *, stages_finished: bool) -> list[Path]:
    """No folder that claims to be a bundle; a kept run only where some stage had finished."""
    runs = run_folders(out)
    assert not [run for run in runs if not run.name.endswith(PARTIAL_SUFFIX)], runs
    if not stages_finished:
        assert runs == [], f"a run that finished no stage is removed, found {runs}"
    return runs


def partial_from_bundle(bundle: Path, out: Path, first_stage: str = "bundle") -> Path:
    """The unfinished run a build killed just before ``first_stage`` leaves: a copy of a finished
    bundle without what that stage and the ones after it wrote (files and records)."""
    run = out / RECIPE_NAME / f"{bundle.name}{PARTIAL_SUFFIX}"
    shutil.copytree(bundle, run)
    for name in ("manifest.json", "report.md", "plan.png", "training.png"):
        (run / name).unlink()
    shutil.rmtree(run / "validation")
    for stage in STAGE_NAMES[STAGE_NAMES.index(first_stage):]:
        record = run / STATE_DIR / f"{stage}.json"
        if record.is_file():
            for name in json.loads(record.read_text())["files"]:
                (run / name).unlink()
            record.unlink()
    return run


# --------------------------------------------------------------------------- a disk that fills up


def fill_disk_at(monkeypatch, first: Callable[[Path], bool]) -> list[Path]:
    """From the first atomic write whose target matches ``first`` on, every write through
    nfcompile.core.io fails with ENOSPC, as on a disk that filled up and stays full. The writer has
    already written its temporary file when the error comes (the disk filled while it wrote), so
    the real cleanup runs. Returns the targets refused, in order."""
    real = nfcompile.core.io.atomic_path
    refused: list[Path] = []

    @contextlib.contextmanager
    def atomic_path(target):
        with real(target) as tmp:
            yield tmp
            if refused or first(Path(target)):
                refused.append(Path(target))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    for module in list(sys.modules.values()):
        if getattr(module, "__dict__", {}).get("atomic_path") is real:
            monkeypatch.setattr(module, "atomic_path", atomic_path)
    return refused


# --------------------------------------------------------------------------- crafted files


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few dozen bytes (a decompression bomb's
    header: readers learn the size before decoding anything)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


class RunsAShellCommand:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint or data file could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
