"""The manifest: sha256 of every file in the bundle, and what a deployment needs to know.

Torchvision-style provenance travels with the model: recipe and hash, library versions, device,
preprocessing, labels, input/output names and shapes, metrics, validation, every stage's status.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nfcompile.core.io import dumps_json, read_json, sha256_bytes, sha256_file
from nfcompile.errors import InputError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "nfcompile.bundle/1"
# The manifest's hash of its own content: the files' hashes cannot cover the file that holds them.
DIGEST_FIELD = "manifest_sha256"
# Not part of the bundle: the manifest itself and a build's lock file.
UNHASHED = {MANIFEST_FILE, ".lock"}


def bundle_files(root: Path) -> list[str]:
    """Every file under ``root`` (relative, '/'-separated), except the manifest and the lock; a link
    to a folder counts as a file (os.walk lists it with the folders and does not enter it)."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        links = [name for name in dirs if (Path(folder) / name).is_symlink()]
        for name in sorted([*names, *links]):
            relative = (Path(folder) / name).relative_to(root).as_posix()
            if relative not in UNHASHED:
                files.append(relative)
    return files


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, without its own digest field."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())


def sealed(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as it will be stored (plain JSON types), with its digest: `verify` then notices an
    edited manifest (labels, preprocessing, tolerances, a file's recorded hash), not only edited files."""
    body = json.loads(dumps_json({k: v for k, v in manifest.items() if k != DIGEST_FIELD}))
    return {**body, DIGEST_FIELD: manifest_digest(body)}


def hash_files(root: Path) -> dict[str, dict[str, Any]]:
    return {name: _hashed(root / name) for name in bundle_files(root)}


def _hashed(path: Path) -> dict[str, Any]:
    if not path.is_file():  # a pipe would block `verify`, a device never end: listed, never opened
        return {"sha256": None, "bytes": None}
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def load_manifest(bundle: Path) -> dict[str, Any]:
    bundle = Path(bundle)
    try:
        exists = bundle.exists()
    except OSError as exc:  # a name too long, a folder we may not enter
        raise InputError(f"{bundle}: {exc.strerror or exc}") from None
    if not exists:
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
