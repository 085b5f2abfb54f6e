"""The results file: one JSON per run of the suite, `benchmarks/results/<date>-<machine>.json`.

It holds everything RESULTS.md is rendered from: the command, the machine, library versions, the
configuration and resolved recipes, and every comparison's measurements down to single runs.
Files are never overwritten: a second run on the same day and machine gets a numbered name.
"""

from __future__ import annotations

import os
import platform
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from nfcompile.core.device import device_fingerprint, library_versions
from nfcompile.core.io import read_json, write_json

FORMAT = "nfcompile.benchmarks/1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_fingerprint(device: torch.device) -> dict[str, Any]:
    info = device_fingerprint(device)
    info["hostname"] = platform.node()
    info["memory_bytes"] = _total_memory()
    info["load_average"] = list(os.getloadavg())
    return info


def machine_slug(fingerprint: dict[str, Any]) -> str:
    """Short, file-name-safe name of the machine: the GPU where one was used, else CPU model and cores."""
    if fingerprint.get("gpu"):
        name = str(fingerprint["gpu"])
    else:
        name = f"{fingerprint.get('processor', 'cpu')}-{fingerprint.get('cpu_count', '?')}cpu"
    words = re.sub(r"\(r\)|\(tm\)|cpu @.*?(?=-|$)|processor", "", name.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", words).strip("-")
    return slug[:48].strip("-") or "machine"


def results_path(folder: Path, started: datetime, slug: str, mode: str) -> Path:
    return unused_path(folder, f"{started:%Y-%m-%d}-{slug}" + ("" if mode == "full" else f"-{mode}"))


def unused_path(folder: Path, stem: str) -> Path:
    """``folder/stem.json``, or ``stem-2.json``, ``stem-3.json``...: a results file is never overwritten."""
    path = Path(folder) / f"{stem}.json"
    number = 2
    while path.exists():
        path = Path(folder) / f"{stem}-{number}.json"
        number += 1
    return path


def results_document(*, command: str, started: datetime, finished: datetime, machine: dict[str, Any],
                     config: dict[str, Any], setups: list[dict[str, Any]], comparisons: list[dict[str, Any]],
                     plans: list[dict[str, Any]]) -> dict[str, Any]:
    """``comparisons``: one entry per comparison, in the order they ran (a list: JSON objects are
    written with sorted keys)."""
    return {
        "format": FORMAT,
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "seconds": (finished - started).total_seconds(),
        "machine": machine,
        "versions": library_versions(),
        "config": config,
        "setups": setups,
        "plans": plans,
        "comparisons": comparisons,
    }


def write_results(document: dict[str, Any], path: Path) -> Path:
    return write_json(path, document)


def latest_results(folder: Path = RESULTS_DIR) -> Path | None:
    """The newest suite results file by its recorded finish time (file names sort by date only); the
    folder also holds the single-purpose benchmarks' files (before_after, meter_overhead, shared_cpu)."""
    documents = {path: read_json(path) for path in sorted(Path(folder).glob("*.json"))}
    suite = [path for path, document in documents.items() if document.get("format") == FORMAT]
    if not suite:
        return None
    return max(suite, key=lambda p: (documents[p].get("finished", ""), p.name))


def _total_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil is a dependency; a sandbox may still refuse to read memory
        return None
