"""Profiles reused across runs: a measured training step's memory (and time) kept on disk, keyed by
everything that enters the measurement, and read back by a later plan of the same model here.

Measuring the units', the blocks' and the backprop baselines' steps is most of the plan stage (about
3.3 of its 4.4 s on the quickstart). A measurement depends only on the code that runs it
(nfcompile's own sources, torch's version), the machine (CPU model and cores, torch's threads; the
GPU and its driver on CUDA), the modules' structure (their repr and every parameter's and buffer's
shape and dtype, never their values), the input shape, the batch sizes measured, the budget and
batch cap that steer where the profiler measures again, and the training settings a step runs with.
A key is the SHA-256 of all of them: any change measures afresh. A reused profile is still a
measurement (taken by an earlier run), and `budget.enforce` measures every block as it trains.
Within one plan, identical units (ResNet's layer1.0 and layer1.1, with the same head) are measured
once.

Where: ``$NFCOMPILE_CACHE_DIR/profiles``, else the user's cache folder (platformdirs:
``~/.cache/nfcompile/profiles`` on Linux). One small JSON file per entry, written atomically; an
entry that cannot be read or does not parse is measured again, and a cache that cannot be written
never fails a build.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import nfcompile
from nfcompile.core.device import device_fingerprint
from nfcompile.core.io import write_json
from nfcompile.core.log import get_logger
from nfcompile.core.memory import MemoryFit
from nfcompile.errors import NfcompileError
from nfcompile.recipe.load import without_fields
from nfcompile.recipe.schema import TrainSection

log = get_logger(__name__)

CACHE_ENV = "NFCOMPILE_CACHE_DIR"
FORMAT = "nfcompile.profile/1"
# Entries kept (about 1 KB each): every code change keys afresh, so the oldest go once a write
# passes this many.
MAX_ENTRIES = 2000
# Training settings no single step reads: changing them keeps the profiles (the learning rate scales
# values, never sizes).
STEP_INDEPENDENT = {"epochs": True, "patience": True, "schedule": True, "lr": True, "reference_batch_size": True,
                    "batch_size": True,
                    "neuroflux": {"lr_scale": True, "stop_stalled_blocks": True, "stall_delta": True,
                                  "batch_policy": True, "head": {"warm_start": True},
                                  "reuse_profiles": True, "block_split_ratio": True,
                                  "max_units_per_block": True, "block_epochs": True,
                                  "head_epochs": True, "slim_heads": True}}


def cache_folder() -> Path:
    import platformdirs

    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("nfcompile")) / "profiles"


class ProfileCache:
    """Reuse of measured profiles in ``folder`` (None: measure every time, as a direct caller expects)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.reused = 0
        self.measured = 0
        self._write_failed = False

    @classmethod
    def for_recipe(cls, reuse: bool) -> "ProfileCache":
        return cls(cache_folder() if reuse else None)

    def fit(self, kind: str, modules: list[nn.Module], measure: Callable[[], MemoryFit], *, train: TrainSection,
            device: torch.device, **inputs: Any) -> MemoryFit:
        """``measure()``'s MemoryFit, or the one an earlier run measured with the same key."""
        return self._reuse(kind, modules, measure, train, device, inputs, encode=dataclasses.asdict, decode=_fit)

    def peak(self, kind: str, modules: list[nn.Module], measure: Callable[[], int], *, train: TrainSection,
             device: torch.device, **inputs: Any) -> int:
        """``measure()``'s peak bytes, or an earlier run's with the same key."""
        return self._reuse(kind, modules, measure, train, device, inputs, encode=lambda v: {"bytes": int(v)},
                           decode=lambda d: _non_negative_int(d["bytes"]))

    def describe(self) -> str:
        if self.folder is None:
            return f"{self.measured} measured (reuse off: train.neuroflux.reuse_profiles)"
        return f"{self.measured} measured, {self.reused} reused from {self.folder}"

    def _reuse(self, kind, modules, measure, train, device, inputs, *, encode, decode):
        if self.folder is None:
            self.measured += 1
            return measure()
        key = profile_key(kind, modules, train=train, device=device, **inputs)
        path = self.folder / f"{key}.json"
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(entry, dict) and entry.get("format") == FORMAT and entry.get("key") == key:
                value = decode(entry["value"])
                self.reused += 1
                return value
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable or not ours: measure again
            log.debug("profile cache: %s unusable (%s); measuring again", path, exc)
        value = measure()
        self.measured += 1
        self._store(path, key, kind, encode(value))
        return value

    def _store(self, path: Path, key: str, kind: str, value: dict[str, Any]) -> None:
        try:
            write_json(path, {"format": FORMAT, "key": key, "kind": kind, "value": value,
                              "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            self._trim()
        except (NfcompileError, OSError) as exc:
            if not self._write_failed:  # once per plan: the build goes on measuring
                log.warning("profile cache: cannot write %s (%s); profiles will be measured again next time",
                            self.folder, exc)
            self._write_failed = True

    def _trim(self) -> None:
        """Remove the least recently written entries beyond MAX_ENTRIES."""
        entries = list(self.folder.glob("*.json"))
        if len(entries) <= MAX_ENTRIES:
            return
        by_age = sorted(entries, key=_written_at)
        for old in by_age[:len(entries) - MAX_ENTRIES]:
            old.unlink(missing_ok=True)  # another build may have removed it first


def _written_at(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed by another build meanwhile
        return 0.0


def profile_key(kind: str, modules: list[nn.Module], *, train: TrainSection, device: torch.device,
                **inputs: Any) -> str:
    described = {
        "format": FORMAT, "kind": kind, "code": _code_digest(), "torch": torch.__version__,
        "machine": {k: v for k, v in device_fingerprint(device).items() if k != "cuda_available"},
        "device": str(device),
        "modules": [_structure(m) for m in modules],
        "train": without_fields(train.model_dump(mode="json"), STEP_INDEPENDENT),
        "inputs": {name: list(v) if isinstance(v, tuple) else v for name, v in sorted(inputs.items())},
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _structure(module: nn.Module) -> dict[str, Any]:
    tensors = [(name, tuple(t.shape), str(t.dtype), t.requires_grad)
               for name, t in [*module.named_parameters(), *module.named_buffers()]]
    return {"type": f"{type(module).__module__}.{type(module).__qualname__}", "repr": repr(module),
            "tensors": tensors, "training": module.training}


@functools.cache
def _code_digest() -> str:
    """SHA-256 of nfcompile's own sources: a changed profiler, step or model measures afresh."""
    root = Path(nfcompile.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _non_negative_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a byte count: {value!r}")
    return value


def _fit(data: dict[str, Any]) -> MemoryFit:
    measurements = tuple((_non_negative_int(b), _non_negative_int(m)) for b, m in data["measurements"])
    fit = MemoryFit(
        fixed_bytes=_non_negative_int(data["fixed_bytes"]),
        bytes_per_sample=_non_negative_int(data["bytes_per_sample"]),
        low_fixed_bytes=_non_negative_int(data["low_fixed_bytes"]),
        low_bytes_per_sample=_non_negative_int(data["low_bytes_per_sample"]),
        persistent_bytes=_non_negative_int(data["persistent_bytes"]), measurements=measurements,
        fit_error=float(data["fit_error"]), seconds_per_sample=float(data["seconds_per_sample"]))
    if len(measurements) < 2 or fit.bytes_per_sample < 1 or fit.low_bytes_per_sample < 1:
        raise ValueError("not a fitted profile")
    return fit
