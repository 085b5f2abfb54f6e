"""The manifest: sha256 of every file in the bundle, and what a deployment needs to know.

Torchvision-style provenance travels with the model: recipe and hash, library versions, device,
preprocessing, labels, input/output names and shapes, metrics, validation, every stage's status.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nfcompile.core.io import read_json, sha256_file
from nfcompile.errors import InputError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "nfcompile.bundle/1"
# Not part of the bundle: the manifest itself and a build's lock file.
UNHASHED = {MANIFEST_FILE, ".lock"}


def bundle_files(root: Path) -> list[str]:
    """Every regular file under ``root`` (relative, '/'-separated), except the manifest."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            relative = (Path(folder) / name).relative_to(root).as_posix()
            if relative not in UNHASHED:
                files.append(relative)
    return files


def hash_files(root: Path) -> dict[str, dict[str, Any]]:
    return {name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size}
            for name in bundle_files(root)}


def load_manifest(bundle: Path) -> dict[str, Any]:
    bundle = Path(bundle)
    if not bundle.exists():
        raise InputError(f"{bundle}: no such bundle folder")
    if bundle.is_file():
        raise InputError(f"{bundle}: is a file; pass the bundle folder (artifacts/<recipe>/<run-id>)")
    if bundle.name.endswith(".partial"):
        raise InputError(f"{bundle}: an unfinished build, not a bundle",
                         hint="finish it with `nfcompile build RECIPE --resume`")
    path = bundle / MANIFEST_FILE
    if not path.is_file():
        raise InputError(f"{bundle}: no {MANIFEST_FILE}; not an nfcompile bundle")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path}: not an nfcompile manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    return manifest
