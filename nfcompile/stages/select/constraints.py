"""The recipe's hard limits on an exit: `select.min_accuracy`, `max_latency_ms`, `max_size_mb`, `max_params`.

Sizes in MB are decimal: 1 MB = 10^6 bytes of ONNX file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from nfcompile.errors import GateFailed
from nfcompile.recipe.schema import SelectSection
from nfcompile.stages.select.pareto import Point

MB = 1_000_000
CLOSEST_SHOWN = 3


@dataclass(frozen=True)
class Violation:
    field: str  # the select.* field that failed
    text: str  # "accuracy 91.20% < min_accuracy 95.00%"
    excess: float  # how far past the limit, relative to it (0.1 = 10% over): ranks the closest exits


def decimal_size(size: int) -> str:
    """Bytes as kB or MB (decimal, like select.max_size_mb)."""
    return f"{size / MB:.3f} MB" if size >= MB else f"{size / 1000:.1f} kB"


def constraint_limits(section: SelectSection) -> dict[str, float | None]:
    return {"min_accuracy": section.min_accuracy, "max_latency_ms": section.max_latency_ms,
            "max_size_mb": section.max_size_mb, "max_params": section.max_params}


def violations(point: Point, section: SelectSection, latency_batch_size: int,
               latency_format: str = "fp32") -> tuple[Violation, ...]:
    """Every constraint ``point`` breaks, with both numbers."""
    found = []
    if section.min_accuracy is not None and point.accuracy < section.min_accuracy:
        found.append(Violation("min_accuracy", f"accuracy {point.accuracy:.2%} < min_accuracy "
                               f"{section.min_accuracy:.2%}",
                               (section.min_accuracy - point.accuracy) / section.min_accuracy))
    if section.max_latency_ms is not None and point.latency_ms > section.max_latency_ms:
        found.append(Violation("max_latency_ms", f"{latency_format.upper()} p50 {point.latency_ms:.3f} ms at batch {latency_batch_size} "
                               f"> max_latency_ms {section.max_latency_ms:g}",
                               point.latency_ms / section.max_latency_ms - 1))
    if section.max_size_mb is not None and point.size > section.max_size_mb * MB:
        found.append(Violation("max_size_mb", f"ONNX {point.size / MB:.3f} MB > max_size_mb "
                               f"{section.max_size_mb:g} (1 MB = 10^6 bytes)",
                               point.size / (section.max_size_mb * MB) - 1))
    if section.max_params is not None and point.params > section.max_params:
        found.append(Violation("max_params", f"{point.params:,} params > max_params {section.max_params:,}",
                               point.params / section.max_params - 1))
    return tuple(found)


def no_feasible_exit(checked: Sequence[tuple[Point, tuple[Violation, ...]]]) -> GateFailed:
    """The error for an empty feasible set: the closest exits and what each one breaks."""
    ranked = sorted(checked, key=lambda item: (sum(v.excess for v in item[1]), item[0].name))
    closest = "; ".join(f"{point.name}: {', '.join(v.text for v in found)}"
                        for point, found in ranked[:CLOSEST_SHOWN])
    fields = sorted({v.field for _, found in checked for v in found})
    return GateFailed(f"no exit meets the select constraints ({len(checked)} scored); closest: {closest}",
                      hint=f"relax {', '.join('select.' + f for f in fields)}, or train longer or wider")
