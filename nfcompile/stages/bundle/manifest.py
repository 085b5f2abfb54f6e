"""The manifest: sha256 of every file in the bundle, and what a deployment needs to know.

Torchvision-style provenance travels with the model: recipe and hash, library versions, device,
preprocessing, labels, input/output names and shapes, metrics, validation, every stage's status.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nfcompile.core.io import dumps_json, inside, read_json, sha256_bytes, sha256_file
from nfcompile.errors import InputError, one_line

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "nfcompile.bundle/1"
# The manifest's hash of its own content: the files' hashes cannot cover the file that holds them.
DIGEST_FIELD = "manifest_sha256"
# Not part of the bundle: the manifest itself and a build's lock file.
UNHASHED = {MANIFEST_FILE, ".lock"}
# What a manifest may be before it is parsed or walked: ours are a few hundred KiB and 8 levels deep.
MAX_MANIFEST_BYTES = 16 << 20
MAX_MANIFEST_DEPTH = 32


# --------------------------------------------------------------------------- the manifest's schema
# Every command that reads a bundle (verify, bench, predict, engine) reads it through `load_manifest`,
# which validates the fields they use against these models. Fields other stages add are allowed
# (extra="allow") and stay as they are; a field that is read is typed, finite and present.

Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
RelativePath = Annotated[str, Field(min_length=1, max_length=4096)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class FileRecord(_Record):
    sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]
    bytes: Optional[Annotated[int, Field(ge=0)]]


class ModelFileRecord(_Record):
    path: RelativePath


class TensorRecord(_Record):
    shape: list[int | str] = Field(min_length=1, max_length=8)


class IORecord(_Record):
    input: TensorRecord
    output: TensorRecord


class ModelRecord(_Record):
    io: IORecord
    onnx: Optional[ModelFileRecord] = None
    int8: Optional[ModelFileRecord] = None


class PreprocessingRecord(_Record):
    image_size: Annotated[int, Field(ge=1, le=4096)]
    mean: tuple[Finite, Finite, Finite]
    std: tuple[Positive, Positive, Positive]
    color: Literal["rgb", "grayscale"] = "rgb"


class ToleranceRecord(_Record):
    atol: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    rtol: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    max_abs_error: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    min_top1_agreement: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    engine_atol: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class RecipeRecord(_Record):
    bench: dict
    tensorrt: dict
    validation: ToleranceRecord = Field(alias="validate")


class ReferenceRecord(_Record):
    files: dict[str, RelativePath]
    models: dict[str, RelativePath]


class BundleManifest(_Record):
    format: Literal["nfcompile.bundle/1"]
    # Not required: a removed or edited digest is what `verify` reports as a changed manifest.
    manifest_sha256: Optional[str] = None
    files: dict[str, FileRecord]
    recipe: RecipeRecord
    model: ModelRecord
    preprocessing: PreprocessingRecord
    labels: list[Annotated[str, Field(max_length=1024)]] = Field(min_length=1, max_length=1_000_000)
    reference: Optional[ReferenceRecord] = None


def _depth(value: Any) -> int:
    """How deep JSON containers nest, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_MANIFEST_DEPTH:
                return level
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def validated_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """``manifest`` when it holds what the bundle commands read; else an InputError naming the field."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise InputError(f"{path}: not an nfcompile manifest (format {one_line(repr(found))[:80]})")
    if _depth(manifest) > MAX_MANIFEST_DEPTH:
        raise InputError(f"{path}: nested more than {MAX_MANIFEST_DEPTH} levels deep; not a manifest nfcompile wrote")
    try:
        BundleManifest.model_validate(manifest)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"{path}: manifest field {one_line(field)[:200]}: {first['msg']}{more}",
                         hint="the manifest is damaged or was edited; rebuild the bundle") from None
    return manifest


def checked_model_file(bundle: Path, relative: str) -> Path:
    """The bundle's model file at ``relative``, inside the bundle, a regular file that parses as the
    format its name says (ONNX protobuf; a TensorRT plan is only checked to be there): a truncated
    or replaced file is named here, not by a runtime's traceback."""
    path = inside(bundle, relative)
    if not path.is_file():
        raise InputError(f"{path}: model file missing or not a regular file",
                         hint=f"check the bundle with `nfcompile verify {bundle}`")
    if path.suffix == ".onnx":
        import onnx
        from google.protobuf.message import DecodeError

        try:
            model = onnx.load(str(path), load_external_data=False)
            onnx.checker.check_model(model)
        except (DecodeError, onnx.checker.ValidationError, ValueError, OSError, RuntimeError) as exc:
            raise InputError(f"{path}: not a readable ONNX model ({one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:200]})",
                             hint=f"the file is damaged or truncated; check the bundle with `nfcompile verify {bundle}`") from None
    return path


def load_array(bundle: Path, relative: str):
    """A reference array of the bundle (.npy), never unpickled: an object array is refused by name."""
    import numpy as np

    path = inside(bundle, relative)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise InputError(f"{path}: holds pickled Python objects, refused (a bundle's arrays are plain "
                             "numbers)", hint="the bundle was tampered with; rebuild it") from None
        raise InputError(f"{path}: not a readable .npy array ({one_line(str(exc))[:200]})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc.strerror if isinstance(exc, OSError) and exc.strerror else exc})") from None


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
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise InputError(f"{path}: {size} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have")
    return validated_manifest(read_json(path), path)
