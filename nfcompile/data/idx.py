"""IDX files, the MNIST family's format (Fashion-MNIST, MNIST, KMNIST), read and validated.

An IDX file is a 4-byte magic (two zero bytes, a dtype byte, the number of dimensions), one
big-endian uint32 per dimension, then the values, row-major. Only unsigned bytes (dtype 0x08) occur
in these datasets: images are (N, rows, cols), labels (N,). Files may be gzipped (`.gz`) or raw.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nfcompile.errors import InputError

# Own reader: torchvision's MNIST classes want <root>/FashionMNIST/raw/ and only assert; Debian lays the files flat.
UNSIGNED_BYTE = 0x08
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
# Bounds on what a header may declare, so a crafted file (or a gzip bomb) cannot fill memory:
# the body is read only up to the size the header promises, and the promise itself is capped.
MAX_ITEMS = 10_000_000
MAX_SIDE = 1024
MAX_BYTES = 8 * 1024 ** 3  # 10 million 28x28 images fit
_CHUNK = 16 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


def idx_file(folder: Path, name: str) -> Path | None:
    """`folder/name` or `folder/name.gz`, whichever exists (raw first); None when neither does."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 (N, rows, cols) from an IDX3 file."""
    body, dims = _read(path, IMAGES_MAGIC)
    return body.reshape(dims)


def read_idx_labels(path: Path, num_classes: int) -> np.ndarray:
    """uint8 (N,) from an IDX1 file, every label below ``num_classes``."""
    labels, _ = _read(path, LABELS_MAGIC)
    if labels.size and int(labels.max()) >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise InputError(f"{path}: label {int(labels[bad])} at item {bad} is outside 0..{num_classes - 1}")
    return labels


def read_idx_pair(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of one split, checked to be as many."""
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path, num_classes)
    if len(images) != len(labels):
        raise InputError(f"{labels_path}: holds {len(labels)} labels but {images_path.name} holds "
                         f"{len(images)} images")
    return images, labels


def _check_count(path: Path, count: int) -> None:
    if count > MAX_ITEMS:
        raise InputError(f"{path}: header declares {count} items, more than the {MAX_ITEMS} this tool reads")


def _check_dims(path: Path, dims: tuple[int, ...]) -> None:
    _check_count(path, dims[0])
    if len(dims) == 1:
        return
    rows, cols = dims[1:]
    if not (1 <= rows <= MAX_SIDE and 1 <= cols <= MAX_SIDE):
        raise InputError(f"{path}: header declares {rows}x{cols} images; expected sides of 1..{MAX_SIDE}")
    if dims[0] * rows * cols > MAX_BYTES:
        raise InputError(f"{path}: header declares {dims[0]} images of {rows}x{cols}, more than the "
                         f"{MAX_BYTES // 1024 ** 3} GiB this tool reads")


def _read(path: Path, magic: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """The flat body and the dimensions of one IDX file, every check done."""
    try:
        with _open(path) as stream:
            dims = _read_header(path, stream, magic)
            _check_dims(path, dims)
            body = _read_exactly(path, stream, int(np.prod(dims, dtype=np.int64)))
            if stream.read(1):
                raise InputError(f"{path}: trailing bytes after the {body.size} values its header declares")
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: truncated or corrupt gzip stream ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return body, dims


def _open(path: Path) -> BinaryIO:
    """gzip or raw, told apart by the content (a misnamed file still reads)."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_header(path: Path, stream: BinaryIO, magic: int) -> tuple[int, ...]:
    head = stream.read(4)
    if len(head) < 4 or head[:2] != b"\x00\x00":
        raise InputError(f"{path}: not an IDX file (magic {head.hex() or 'missing'}, expected {magic:08x})")
    if head[2] != UNSIGNED_BYTE:
        raise InputError(f"{path}: IDX dtype byte 0x{head[2]:02x}, expected 0x{UNSIGNED_BYTE:02x} (unsigned byte)")
    expected_ndim = magic & 0xFF
    if head[3] != expected_ndim:
        raise InputError(f"{path}: IDX magic {head.hex()} has {head[3]} dimension(s), expected {magic:08x} "
                         f"({expected_ndim}); is this the {'labels' if expected_ndim == 3 else 'images'} file?")
    raw = stream.read(4 * expected_ndim)
    if len(raw) < 4 * expected_ndim:
        raise InputError(f"{path}: truncated IDX header")
    return tuple(int(d) for d in np.frombuffer(raw, dtype=">u4"))


def _read_exactly(path: Path, stream: BinaryIO, size: int) -> np.ndarray:
    """``size`` bytes as uint8, read in chunks: memory grows with the data that is really there, so a
    header promising more than the file holds costs nothing."""
    body = bytearray()
    while len(body) < size:
        chunk = stream.read(min(_CHUNK, size - len(body)))
        if not chunk:
            raise InputError(f"{path}: truncated: holds {len(body)} of the {size} values its header declares")
        body += chunk
    return np.frombuffer(body, dtype=np.uint8)  # a bytearray: the array is writable, no copy
