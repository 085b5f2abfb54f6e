"""Small formatters for RESULTS.md: tables, spreads, sizes. They read the results file's plain JSON."""

from __future__ import annotations

from typing import Any, Sequence

DASH = "–"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "_(no rows)_\n"
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return DASH if value is None or value == "" else str(value).replace("|", "\\|").replace("\n", " ")


def number(value: float | None, digits: int = 2, suffix: str = "") -> str | None:
    return None if value is None else f"{value:.{digits}f}{suffix}"


def spread(value: dict[str, Any] | None, digits: int = 2, suffix: str = "", scale: float = 1.0) -> str | None:
    """``mean (min–max)``, or the single value where there was one repeat; ``scale`` multiplies all."""
    if not value:
        return None
    mean = f"{value['mean'] * scale:.{digits}f}{suffix}"
    if len(value["values"]) < 2:
        return mean
    return f"{mean} ({value['min'] * scale:.{digits}f}{DASH}{value['max'] * scale:.{digits}f})"


def mib(size: float | None, digits: int = 1) -> str | None:
    return None if size is None else f"{size / 2**20:.{digits}f} MiB"


def peak_of_budget(measured: float, budget: float) -> str:
    """``9.1 MiB (99%)``, flagged where the measured peak went over the budget."""
    text = f"{mib(measured)} ({measured / budget:.0%})"
    return text + " **over budget**" if measured > budget else text


def kib(size: float | None) -> str | None:
    return None if size is None else f"{size / 1024:.1f} KiB"


def percent(fraction: float | None, digits: int = 1, signed: bool = False) -> str | None:
    if fraction is None:
        return None
    return f"{fraction * 100:+.{digits}f}%" if signed else f"{fraction * 100:.{digits}f}%"


def count(value: int | None) -> str | None:
    if value is None:
        return None
    return f"{value / 1e6:.2f}M" if value >= 1e6 else (f"{value / 1e3:.1f}k" if value >= 1e3 else str(value))


def batches(sizes: Sequence[int] | None) -> str | None:
    return None if not sizes else "/".join(str(s) for s in sizes)
