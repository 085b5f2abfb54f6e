"""Byte sizes as people write them, and as we print them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfcompile.core.bytesize import format_bytes, parse_bytes


@pytest.mark.parametrize("text, expected", [
    ("512MiB", 512 * 2**20), ("96mib", 96 * 2**20), ("1.5 GB", 1_500_000_000), ("2GiB", 2 * 2**30),
    ("4096", 4096), (4096, 4096), ("10kb", 10_000), ("10KiB", 10_240), ("2k", 2048), ("1M", 2**20),
    ("0.5G", 2**29), (".5GiB", 2**29), ("1e9", 10**9), ("1.5e3KiB", 1_536_000), ("+2MB", 2_000_000),
    (" 3 B ", 3), (1.0, 1), ("1TiB", 2**40),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("value, fragment", [
    ("-5MiB", "positive"), (-5, "positive"), (0, "positive"), ("0GB", "positive"),
    ("5XB", "unknown size unit 'XB'"), ("1 parsec", "unknown size unit"),
    ("", "cannot read"), ("MiB", "cannot read"), ("five MiB", "cannot read"), ("1,5GB", "cannot read"),
    (True, "boolean"), (float("nan"), "finite"), (float("inf"), "finite"), ("1e400", "finite"),
    ("1e300GiB", "finite"), (10**400, "finite"), ("0.5", "less than one byte"),
])
def test_parse_bytes_refuses(value, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_bytes(value)


@given(st.integers(min_value=1, max_value=2**50))
def test_plain_byte_counts_pass_through(count):
    assert parse_bytes(count) == count == parse_bytes(str(count))


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["KiB", "MiB", "GiB", "KB", "MB", "GB"]))
def test_units_scale(number, unit):
    scale = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9}[unit]
    assert parse_bytes(f"{number}{unit}") == number * scale == parse_bytes(f"{number} {unit.lower()}")


@pytest.mark.parametrize("count, text", [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                         (48 * 2**20, "48.0 MiB"), (3 * 2**30, "3.0 GiB"), (5 * 2**40, "5120.0 GiB")])
def test_format_bytes(count, text):
    assert format_bytes(count) == text
