"""The comparisons the suite runs, in the order it runs them.

A comparison is three plain functions: ``run`` measures on a `Workbench` and returns JSON-ready
data, ``render`` turns that data into a RESULTS.md section, and ``headlines`` picks the figures the
report sets beside the published NeuroFlux ones. Registering a name twice is an error, as for the
engine's adapters and datasets. `benchmarks/comparisons/__init__.py` lists the modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from nfcompile.core.registry import Registry

if TYPE_CHECKING:
    from benchmarks.workbench import Workbench

@dataclass(frozen=True)
class Headline:
    """Our values of one published figure (keyed as in `benchmarks.report.PUBLISHED`), and the
    measured conditions they come from (one line)."""

    values: tuple[float, ...]
    context: str = ""


def _no_headlines(result: dict[str, Any]) -> dict[str, Headline]:
    return {}


@dataclass(frozen=True)
class Comparison:
    name: str  # what `--only` takes
    title: str
    question: str  # what a reviewer asks that this answers; printed by --list and in RESULTS.md
    run: Callable[["Workbench"], dict[str, Any]]
    render: Callable[[dict[str, Any]], str]
    headlines: Callable[[dict[str, Any]], dict[str, Headline]] = _no_headlines
    selects_exits: bool = False  # its figures depend on which exit selection ships (the recipe's select section)


_COMPARISONS: Registry[Comparison] = Registry("comparison", unknown=lambda name, known: KeyError(
    f"unknown comparison {name!r}; choose from {', '.join(known)}"))


def register_comparison(comparison: Comparison) -> Comparison:
    return _COMPARISONS.register(comparison.name, comparison)


def list_comparisons() -> list[Comparison]:
    import benchmarks.comparisons  # noqa: F401  (registers the suite's comparisons)

    return list(_COMPARISONS)


def get_comparison(name: str) -> Comparison:
    list_comparisons()
    return _COMPARISONS.get(name)
