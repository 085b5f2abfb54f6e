"""What selection shows: `exits.json`, a terminal table, and `pareto.png`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from rich.table import Table

from nfcompile.core.io import write_bytes, write_json
from nfcompile.core.results import ExitScore, ExitScores, Selection
from nfcompile.stages.select.constraints import MB, decimal_size
from nfcompile.stages.select.pareto import Point, pareto_front

EXITS_FORMAT = "nfcompile.exits/1"
UNITS = {"val_accuracy": "fraction of the validation split: what selection decides on",
         "test_accuracy": "fraction of the untouched test split: measured, never used to select",
         "onnx_bytes": "bytes of the onnxsim-simplified graph that was timed", "max_size_mb": "MB = 10^6 bytes",
         "latency": "milliseconds, p50/p90 over timed runs after warm-up, all exits timed in interleaved rounds",
         "int8_latency": "the same for the exit's INT8 QDQ graph (select.latency_format: int8)",
         "macs": "multiply-accumulates per sample",
         "vs_full": "ratios of this network's last exit (all units + last head, same training) over the chosen "
                    "exit (2.0 = half); accuracy_delta (validation) and test_accuracy_delta = chosen - last exit, "
                    "fractions"}
_VERDICT_FIELDS = ("on_front", "on_feasible_front", "feasible", "violations", "chosen", "why")


def exits_document(scores: ExitScores, selection: Selection) -> dict[str, Any]:
    """Every exit with its scores and verdict, the choice, and the full model to compare with."""
    verdicts = {v.name: v.to_dict() for v in selection.verdicts}
    return {
        "format": EXITS_FORMAT,
        "backend": scores.backend,
        "val_samples": scores.val_samples,
        "test_samples": scores.test_samples,
        "batch_sizes": list(scores.batch_sizes),
        "timing": scores.timing,
        "load": scores.load.to_dict() if scores.load else None,
        "latency_batch_size": selection.latency_batch_size,
        "latency_format": selection.latency_format,
        "latency_rule": selection.latency_rule,
        "policy": selection.policy,
        "constraints": selection.constraints,
        "chosen": selection.chosen,
        "reason": selection.reason,
        "vs_full": selection.vs_full,
        "units": UNITS,
        "full_model": _exit_entry(scores.full_model),
        "exits": [{**_exit_entry(score), **{k: verdicts[score.name][k] for k in _VERDICT_FIELDS}}
                  for score in scores.exits],
    }


def _exit_entry(score: ExitScore) -> dict[str, Any]:
    """An exit's scores with its two accuracies named for their splits."""
    entry = score.to_dict()
    accuracy = entry.pop("accuracy")
    test = entry.pop("test_accuracy")
    return {"name": entry.pop("name"), "unit": entry.pop("unit"), "val_accuracy": accuracy, "test_accuracy": test,
            **entry}


def write_exits_json(scores: ExitScores, selection: Selection, path: Path) -> Path:
    return write_json(path, exits_document(scores, selection))


def _count(value: int) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f}{suffix}"
    return str(value)


def _p50(score: ExitScore, batch: int) -> str:
    latency = score.latency_at(batch)
    return "-" if latency is None else f"{latency.p50_ms:.3f}"


def vs_full_summary(selection: Selection) -> str:
    """One line: the chosen exit against the full model."""
    ratios = selection.vs_full
    parts = [f"{ratios['param_reduction']:.1f}x fewer parameters", f"{ratios['size_reduction']:.1f}x smaller ONNX"]
    parts += [f"{value:.2f}x throughput at batch {key.removeprefix('throughput_gain_b')}"
              for key, value in ratios.items() if key.startswith("throughput_gain_b") and value is not None]
    delta = ratios.get("accuracy_delta")
    parts.append("last exit not trained" if delta is None else f"validation accuracy {delta * 100:+.2f} points")
    test = ratios.get("test_accuracy_delta")
    if test is not None:
        parts.append(f"test accuracy {test * 100:+.2f} points")
    return f"{selection.chosen} vs this network's last exit: " + ", ".join(parts)


def exits_table(scores: ExitScores, selection: Selection) -> Table:
    """Every exit and the full model, one row each; the chosen row in bold."""
    table = Table(title=f"Exits ({scores.backend}, {selection.policy}; p50 in ms)",
                  caption=vs_full_summary(selection), caption_justify="left")
    for name in ("exit", "unit", "val acc.", "test acc.", "params", "MACs", "ONNX"):
        table.add_column(name, justify="left" if name == "exit" else "right")
    for batch in scores.batch_sizes:
        table.add_column(f"p50 b{batch}", justify="right")
    table.add_column("front", justify="center")
    table.add_column("why", overflow="fold", ratio=1)
    verdicts = {v.name: v for v in selection.verdicts}

    def cells(score: ExitScore) -> list[str]:
        accuracy = "-" if score.accuracy is None else f"{score.accuracy:.2%}"
        test = "-" if score.test_accuracy is None else f"{score.test_accuracy:.2%}"
        return [score.name, str(score.unit), accuracy, test, _count(score.params), _count(score.macs),
                decimal_size(score.onnx_bytes), *(_p50(score, b) for b in scores.batch_sizes)]

    for score in scores.exits:
        verdict = verdicts[score.name]
        front = "yes" if verdict.on_feasible_front else ("infeasible" if not verdict.feasible else "-")
        table.add_row(*cells(score), front, verdict.why, style="bold" if verdict.chosen else None)
    full = scores.full_model
    note = "this network's last exit: all units + last head" + ("" if full.accuracy is not None
                                                                 else "; last unit not trained")
    table.add_row(*cells(full), "", note, style="dim")
    return table


def _axis_scale(values: Sequence[float]) -> str:
    positive = [v for v in values if v > 0]
    return "log" if positive and max(positive) / min(positive) > 20 else "linear"


def plot_pareto(scores: ExitScores, selection: Selection, path: Path) -> Path:
    """Two panels, accuracy vs latency and accuracy vs ONNX size: every exit, the front, the
    constraints, the choice and the full model. PNG, rendered in memory and written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    batch = selection.latency_batch_size or scores.batch_sizes[0]
    fmt = selection.latency_format
    verdicts = {v.name: v for v in selection.verdicts}
    figure = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)

    def latency(score: ExitScore) -> float | None:
        lat = score.latency_at(batch, fmt)
        return None if lat is None else lat.p50_ms

    panels = ((axes[0], latency, f"{fmt.upper()} p50 latency at batch {batch} (ms, {scores.backend})",
               selection.constraints.get("max_latency_ms")),
              (axes[1], lambda s: s.onnx_bytes / MB, "ONNX size (MB = 10^6 bytes)",
               selection.constraints.get("max_size_mb")))
    for ax, x_of, label, x_limit in panels:
        exits = [s for s in scores.exits if x_of(s) is not None]
        _draw_panel(ax, exits, x_of, verdicts)
        full = scores.full_model
        full_x = x_of(full)
        if full_x is not None and full.accuracy is not None:
            # Hollow: when the last exit was trained it is the full model, and stays visible inside.
            ax.scatter([full_x], [full.accuracy * 100], marker="D", s=110, facecolor="none", edgecolor="black",
                       linewidth=1.5, zorder=4, label="last exit (all units)")
        elif full_x is not None:
            ax.axvline(full_x, color="black", linestyle=":", label="last exit (not trained)")
        if x_limit is not None:
            ax.axvline(x_limit, color="tab:red", linestyle="--", linewidth=1, label="constraint")
        if selection.constraints.get("min_accuracy") is not None:
            ax.axhline(selection.constraints["min_accuracy"] * 100, color="tab:red", linestyle="--", linewidth=1)
        scale = _axis_scale([x_of(s) for s in [*exits, full] if x_of(s) is not None])
        ax.set_xscale(scale)
        if scale == "log":
            # Matplotlib labels the minor ticks of a log axis spanning a decade or two, and they
            # overlap: labels at 1, 2 and 5 per decade only, in plain numbers; minor ticks unlabelled.
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"top-1 accuracy (%), {scores.val_samples or scores.test_samples} validation samples")
    axes[0].legend(loc="lower right", fontsize="small")
    figure.suptitle(f"Exits: {selection.policy} chose {selection.chosen}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return write_bytes(path, buffer.getvalue())


def _draw_panel(ax: Any, exits: Sequence[ExitScore], x_of: Any, verdicts: dict[str, Any]) -> None:
    xs = {s.name: x_of(s) for s in exits}
    ys = {s.name: s.accuracy * 100 for s in exits}
    groups = (("dominated", lambda v: v.feasible and not v.on_feasible_front, dict(color="tab:gray", marker="o")),
              ("feasible front", lambda v: v.on_feasible_front, dict(color="tab:blue", marker="o")),
              ("infeasible", lambda v: not v.feasible, dict(color="tab:red", marker="x")))
    for label, member, style in groups:
        names = [s.name for s in exits if member(verdicts[s.name])]
        if names:
            ax.scatter([xs[n] for n in names], [ys[n] for n in names], s=30, zorder=3, label=label, **style)
    # The front as a staircase in this panel's plane: the feasible-front points no other one beats
    # on both this cost and accuracy (the cost rides in the latency slot; size 0 never decides).
    on_front = [Point(s.name, s.accuracy, 0, xs[s.name]) for s in exits if verdicts[s.name].on_feasible_front]
    stairs = sorted(pareto_front(on_front), key=lambda p: (p.latency_ms, p.accuracy))
    if len(stairs) > 1:
        ax.step([p.latency_ms for p in stairs], [p.accuracy * 100 for p in stairs], where="post",
                color="tab:blue", linewidth=1, alpha=0.7)
    for s in exits:
        ax.annotate(str(s.unit), (xs[s.name], ys[s.name]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7, color="dimgray")
        if verdicts[s.name].chosen:
            ax.scatter([xs[s.name]], [ys[s.name]], marker="*", s=260, color="gold", edgecolor="black",
                       zorder=5, label="chosen")
