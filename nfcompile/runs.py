"""Run folders: ``<out>/<recipe-name>/<run-id>[.partial]/``, and which one a command builds into.

A run is built in ``<run-id>.partial/`` and renamed to ``<run-id>/`` in one step when its last
stage finishes: a folder without ``.partial`` is a complete bundle. A run being built is locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from nfcompile.core.io import read_json
from nfcompile.core.log import get_logger
from nfcompile.core.results import StageRecord
from nfcompile.errors import InputError, NfcompileError, RunBusy

log = get_logger(__name__)

PARTIAL_SUFFIX = ".partial"
STATE_DIR = "state"
LOCK_FILE = ".lock"
CHECKPOINT_FILE = "checkpoint/checkpoint.pt"


class RunFolder:
    """``<out>/<recipe-name>/<run-id>[.partial]/`` and what lives in it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def finished(self) -> bool:
        return not self.path.name.endswith(PARTIAL_SUFFIX)

    @property
    def run_id(self) -> str:
        return self.path.name.removesuffix(PARTIAL_SUFFIX)

    @property
    def state(self) -> Path:
        return self.path / STATE_DIR

    def record_path(self, stage: str) -> Path:
        return self.state / f"{stage}.json"

    def read_record(self, stage: str) -> StageRecord:
        """A finished stage's record, validated (a hand-edited or stale file is an InputError)."""
        path = self.record_path(stage)
        return StageRecord.from_dict(read_json(path), source=str(path))

    @classmethod
    def create(cls, out_dir: Path, recipe_name: str) -> "RunFolder":
        parent = recipe_folder(out_dir, recipe_name)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        for _ in range(100):  # mkdir is atomic: two builds never share a run id
            path = parent / f"{stamp}-{secrets.token_hex(2)}{PARTIAL_SUFFIX}"
            try:
                path.mkdir(parents=False)
                return cls(path)
            except FileExistsError:
                continue
            except OSError as exc:  # permissions changed since recipe_folder looked, a full disk...
                raise InputError(f"cannot create a run folder in {parent}: {exc.strerror or exc}") from None
        raise NfcompileError(f"could not create a run folder in {parent}")

    @classmethod
    def find(cls, out_dir: Path, recipe_name: str, *, unfinished_only: bool) -> "RunFolder | None":
        """The most recent run of this recipe (by run id, which starts with the UTC time)."""
        parent = Path(out_dir) / recipe_name
        if not parent.is_dir():
            return None
        runs = [cls(p) for p in parent.iterdir() if p.is_dir() and (p / STATE_DIR).is_dir()]
        runs = [r for r in runs if not (unfinished_only and r.finished)]
        return max(runs, key=lambda r: r.run_id) if runs else None

    def finish(self) -> "RunFolder":
        target = self.path.with_name(self.run_id)
        os.replace(self.path, target)  # one rename: the bundle appears complete or not at all
        return RunFolder(target)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One build per run folder at a time; a second one is refused, not interleaved."""
        handle = open(self.path / LOCK_FILE, "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusy(f"{self.path} is being built by another nfcompile process",
                              hint="wait for it, or start a new run without --resume") from None
            yield
        finally:
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                (self.path / LOCK_FILE).unlink()


def recipe_folder(out_dir: Path, recipe_name: str) -> Path:
    out_dir = Path(out_dir)
    try:
        is_file = out_dir.exists() and not out_dir.is_dir()
    except OSError as exc:  # a name too long, a folder we may not enter
        raise InputError(f"--out {out_dir}: {exc.strerror or exc}") from None
    if is_file:
        raise InputError(f"--out {out_dir} is a file, not a folder")
    parent = out_dir / recipe_name
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {parent}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK):
        raise InputError(f"{parent} is not writable")
    return parent


def open_run(recipe_name: str, out_dir: Path, *, resume: bool, run_dir: Path | None,
             need_stage: str | None = None) -> tuple[RunFolder, bool]:
    """The run a command builds into, and whether it continues one: ``run_dir`` when given, else (with
    ``resume``, or for a command that continues after ``need_stage``) the latest unfinished run of the
    recipe, else a new one."""
    if run_dir is not None:
        run = RunFolder(Path(run_dir))
        try:
            is_run = run.state.is_dir()
        except OSError as exc:  # a name too long, a folder we may not enter
            raise InputError(f"--run {run_dir}: {exc.strerror or exc}") from None
        if not is_run:
            raise InputError(f"--run {run_dir}: not an nfcompile run folder (no state/)")
        if run.finished:
            raise InputError(f"--run {run_dir}: a finished bundle; it is not built into again",
                             hint="start a new run, or use `nfcompile select --run` to inspect it")
        return run, True
    if resume or need_stage:
        run = RunFolder.find(out_dir, recipe_name, unfinished_only=True)
        if run is not None:
            log.info("continuing %s", run.path)
            return run, True
        if need_stage:
            raise InputError(f"no unfinished run of {recipe_name!r} in {out_dir}",
                             hint=f"run `nfcompile train` first (this command continues after the {need_stage} stage)")
        log.info("no unfinished run of %r in %s: starting a new one", recipe_name, out_dir)
    recipe_folder(out_dir, recipe_name)
    return RunFolder.create(out_dir, recipe_name), False


def keep_or_discard(run: RunFolder, exc: BaseException) -> None:
    """A run that finished no stage holds nothing worth resuming: remove it, leave nothing half-written.
    Otherwise keep it (marked .partial) so `--resume` continues where it stopped."""
    kept = [p for p in run.state.glob("*.json") if p.name != "recipe.json"
            and read_json(p).get("status") in ("ok", "skipped", "reused")] if run.state.is_dir() else []
    if not kept and not (run.path / CHECKPOINT_FILE).exists():
        shutil.rmtree(run.path, ignore_errors=True)
    elif not isinstance(exc, KeyboardInterrupt):
        log.info("unfinished run kept at %s; fix the cause and continue with --resume", run.path)
