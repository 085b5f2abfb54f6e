"""Every file nfcompile writes goes through here: atomic, inside an explicit folder.

A write lands in a temporary file next to its target and is renamed over it, so a reader
(or a crash) never sees half a file. Checkpoints load with ``weights_only=True`` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from nfcompile.errors import InputError, NfcompileError

_CHUNK = 1 << 20
# Temporary files of atomic writes are hidden (".<name>.<random>.tmp") beside their target.
TEMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk, not only the file's bytes.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    For writers that insist on a file name (onnx.save, torch.onnx.export, TensorRT).
    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NfcompileError(f"cannot create folder {parent}: {exc.strerror}") from exc
    require_regular_target(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=parent)
    except OSError as exc:
        raise NfcompileError(f"cannot write {target}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        # A full disk or a read-only folder hit by any writer (onnx.save, np.save, torch.save) is
        # one line naming the file, not a traceback.
        if isinstance(exc, OSError):
            raise NfcompileError(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise


def require_regular_target(target: Path) -> None:
    """Refuse to write over anything but a regular file: the rename would replace a device node, a
    pipe or a socket with a file (as root, the real node), and a link with a file where the user
    meant the file it points to. A missing target is fine."""
    try:
        info = target.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise InputError(f"{target}: is a symbolic link (to {os.readlink(target)}); nfcompile writes only "
                         "regular files", hint="remove the link or write to another path")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a device node"
                if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a named pipe"
                if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "a special file")
        raise InputError(f"{target}: is {kind}, not a regular file; nfcompile writes only regular files",
                         hint="write to another path")


def write_crash_log(text: str) -> Path | None:
    """Keep an unexpected error's traceback in a file of its own (under the temporary folder, so it
    survives a run folder that is discarded); its path, or None when nothing could be written."""
    try:
        folder = Path(tempfile.gettempdir()) / "nfcompile-logs"
        folder.mkdir(mode=0o700, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="crash-", suffix=".log", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return Path(name)
    except OSError:
        return None


def remove_scratch(folder: str | os.PathLike, keep: tuple[str, ...] = ()) -> list[str]:
    """Delete hidden entries under ``folder`` (temporary files of atomic writes, work folders)
    that a killed process left behind; ``keep`` names top-level entries to spare (a lock file).

    Only for a folder nobody else writes to at the same time (a run folder under its lock): in a
    run folder every hidden name is scratch, never a result. Returns the removed paths, relative.
    """
    import shutil

    root = Path(folder)
    removed = []
    for parent, dirs, names in os.walk(root):
        for name in [*names, *dirs]:
            path = Path(parent) / name
            relative = path.relative_to(root).as_posix()
            if not name.startswith(".") or relative in keep:
                continue
            if name in dirs and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(relative)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(removed)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def write_text(target: str | os.PathLike, text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from results: paths become strings, tuples lists, numpy scalars numbers."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    return write_text(target, dumps_json(obj))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from exc
    except RecursionError:
        raise InputError(f"{path}: not a readable JSON file (nested too deeply to parse)") from None


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(target: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically save a checkpoint that `load_checkpoint` can read with weights_only=True.

    Only tensors and plain containers of str/int/float/bool/None belong in ``state``.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_bytes(target, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: a crafted pickle is refused, never run."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _weights_only_reason(exc)
        if "GLOBAL" not in reason:  # not a pickle at all, or a damaged one
            raise InputError(f"{path}: not a readable checkpoint ({reason})") from exc
        raise InputError(
            f"{path}: refused to load checkpoint: it holds objects other than tensors "
            f"and plain containers ({reason})",
            hint="only load checkpoints written by nfcompile or torch.save of a state_dict",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(state, dict):
        raise InputError(f"{path}: checkpoint holds {type(state).__name__}, expected a dict")
    return state


def _weights_only_reason(exc: Exception) -> str:
    """The line of torch's weights_only error that says what failed.

    Its message opens with generic advice, including re-running with weights_only=False (which
    would run the file's code): that line is the last thing to repeat to a user.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        cause = line.partition("WeightsUnpickler error:")[2].strip()
        if cause:
            return cause
    generic = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
    return next((line for line in lines if not line.startswith(generic)), type(exc).__name__)


def inside(base: str | os.PathLike, candidate: str | os.PathLike) -> Path:
    """Resolve ``candidate`` under ``base`` and refuse anything that escapes it."""
    base_resolved = Path(base).resolve()
    resolved = (base_resolved / candidate).resolve()
    if resolved != base_resolved and base_resolved not in resolved.parents:
        raise InputError(f"path {candidate!s} points outside the output folder {base_resolved}")
    return resolved
