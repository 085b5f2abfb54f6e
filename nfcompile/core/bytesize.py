"""Byte sizes as people write them ("512MiB", "1.5 GB", 4096) and as we print them."""

from __future__ import annotations

import math
import re

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30,
}
# A sign is read so that "-5MiB" is reported as negative, not as unreadable; YAML reads `1e9`
# as a string, so an exponent is accepted too.
_PATTERN = re.compile(r"^\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | float | str) -> int:
    """Return a byte count; raise ValueError naming what is wrong."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB or a number of bytes, got a boolean")
    if isinstance(value, (int, float)):
        amount, unit = value, ""
    else:
        match = _PATTERN.match(value)
        if not match:
            raise ValueError(f"cannot read {value!r} as a size; write e.g. 512MiB, 2GB or 1048576")
        amount, unit = match.group(1), match.group(2).lower()
        if unit not in _UNITS:
            raise ValueError(f"unknown size unit {match.group(2)!r} in {value!r}; "
                             "use B, KiB, MiB, GiB, KB, MB or GB")
    try:
        count = float(amount) * _UNITS[unit]
    except OverflowError:  # an int beyond float range
        count = math.inf
    if not math.isfinite(count):  # also "1e300GiB", which overflows only once scaled
        raise ValueError(f"size must be a finite number, got {value!r}")
    if count <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    if count < 1:
        raise ValueError(f"size {value!r} is less than one byte")
    return int(count)


def format_bytes(count: int | float | None) -> str:
    if count is None:
        return "-"
    count = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
