"""What the CLI shows: rich tables on stdout, or one JSON document with --json (logs go to stderr).

Every function takes a typed result from `nfcompile.api` and prints it; nothing here computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nfcompile.core.bytesize import format_bytes
from nfcompile.core.io import dumps_json
from nfcompile.recipe import Recipe, recipe_dict, recipe_hash, recipe_yaml

stdout = Console(soft_wrap=True)


def emit_json(document: Any) -> None:
    print(dumps_json(document), end="")


def _say(text: str) -> None:
    stdout.print(text, highlight=False)


# --------------------------------------------------------------------------- check / plan


def show_check(source: Path, recipe: Recipe, available: dict[str, list[str]] | None, *, as_json: bool) -> None:
    if as_json:
        emit_json({"recipe": recipe_dict(recipe), "recipe_sha256": recipe_hash(recipe), **(available or {})})
        return
    _say(f"# {source}: valid (sha256 {recipe_hash(recipe)[:16]})")
    stdout.print(recipe_yaml(recipe), end="", highlight=False, markup=False)
    for name, values in (available or {}).items():
        _say(f"# {name}: {', '.join(values)}")


def show_plan(plan, *, as_json: bool) -> None:
    if as_json:
        emit_json({"plan": plan})
    else:
        stdout.print(plan_table(plan))


def plan_table(plan, train=None) -> Table:
    """The memory plan; with a NeuroFlux training, what each block measured beside it."""
    measured = {b.index: b for b in train.blocks} if train is not None and train.method == "neuroflux" else {}
    table = Table(title=f"Memory plan: budget {format_bytes(plan.budget_bytes)} ({plan.budget_source}), "
                        f"device {plan.device}")
    extra = ("tracked peak", "RSS rise") if measured else ()
    slim = plan.has_slim_phase
    left = ("units", "output cache", "slim heads' features")
    for column in ("block", "units", "batch", "eval batch", "predicted peak", *extra, "of budget",
                   "rest of network", "output cache", *(left[-1:] if slim else ())):
        table.add_column(column, justify="left" if column in left else "right")
    for block in plan.blocks:
        names = f"{plan.units[block.units[0]].name} .. {plan.units[block.units[-1]].name}" \
            if len(block.units) > 1 else plan.units[block.units[0]].name
        row = [str(block.index), f"{block.units[0]}-{block.units[-1]} ({names})", str(block.batch_size),
               str(block.evaluation_batch), format_bytes(block.predicted_peak_bytes)]
        if measured:
            result = measured.get(block.index)
            row += [format_bytes(result.measured_peak_bytes if result else None),
                    format_bytes(result.rss_rise_bytes if result else None)]
        row += [f"{block.predicted_peak_bytes / plan.budget_bytes:.0%}", format_bytes(block.other_resident_bytes),
                _placed(block.cache_placement, block.cache_bytes) + _written_at(block.caching_batch_size, block)]
        if slim:
            row.append(_placed(block.slim_features_placement, block.slim_features_bytes)
                       + _written_at(block.slim_features_batch, block))
        table.add_row(*row)
    table.caption = (f"backprop at this budget: batch "
                     f"{_baseline_batches(plan.backprop_batch_size, plan.backprop_evaluation_batch_size)}; "
                     f"with gradient checkpointing: batch "
                     f"{_baseline_batches(plan.checkpointing_batch_size, plan.checkpointing_evaluation_batch_size)}; "
                     f"{_evaluation_rule(plan)}batch 1 needs {format_bytes(plan.min_budget_bytes)}. "
                     "A block's peak counts "
                     f"{plan.accounting or 'its own units and heads'}. Step profiles: {plan.profiles_measured} "
                     f"measured, {plan.profiles_reused} reused from earlier measurements "
                     "(train.neuroflux.reuse_profiles).")
    return table


def _placed(where: str, size: int) -> str:
    return f"{where} {format_bytes(size) if size else ''}".strip()


def _written_at(batch: int, block) -> str:
    """Where a pass that fills a cache (the output cache, the slim heads' features) runs below the block's
    evaluation batch (what it writes would not fit beside it), at which batch."""
    return f", written at batch {batch}" if 0 < batch < block.evaluation_batch else ""


def _evaluation_rule(plan) -> str:
    """Plans written before evaluation batches were planned have none to explain."""
    if not (plan.backprop_evaluation_batch_size or any(b.evaluation_batch_size for b in plan.blocks)):
        return ""
    return ("evaluation runs at the largest batch whose measured evaluation holds no more than the training "
            "step (a block that recomputes its input: at its training batch); ")


def _baseline_batches(batch: int, evaluation: int) -> str:
    if not batch:
        return "none fits"
    return f"{batch} (evaluated at {evaluation})" if evaluation > batch else str(batch)


# --------------------------------------------------------------------------- build / train / select


def show_train(result, source: Path, *, as_json: bool) -> None:
    if as_json:
        emit_json({"run": str(result.path), "plan": result.plan, "train": result.train})
        return
    if result.plan is not None:
        stdout.print(plan_table(result.plan, result.train))
    stdout.print(training_table(result.train))
    _say(f"run folder: {result.path}\nnext: nfcompile export {source} (or nfcompile select {source})")


def training_table(train) -> Table:
    table = Table(title=f"Training ({train.method}, {train.seconds:.1f} s)")
    for column in ("block", "units", "batch", "epochs", "stopped", "best val. accuracy", "predicted peak",
                   "tracked peak", "RSS rise", "seconds"):
        table.add_column(column)
    for b in train.blocks:
        table.add_row(str(b.index), f"{b.units[0]}-{b.units[-1]}", str(b.batch_size), b.epochs_label,
                      b.stop_reason, f"{max(b.best_val_accuracy) * 100:.2f}%" if b.best_val_accuracy else "-",
                      format_bytes(b.predicted_peak_bytes or None), format_bytes(b.measured_peak_bytes),
                      format_bytes(b.rss_rise_bytes), f"{b.seconds + b.cache_seconds:.1f}")
    if train.blocks and train.blocks[0].measurement:
        table.caption = f"Peaks measured by {train.blocks[0].measurement}."
    return table


def show_select(result, *, as_json: bool) -> None:
    from nfcompile.stages.select import exits_table

    if as_json:
        emit_json({"run": str(result.path), "scores": result.scores, "selection": result.selection})
        return
    stdout.print(exits_table(result.scores, result.selection))
    _say(f"chosen: {result.selection.chosen} — {result.selection.reason}")


def show_build(result, *, as_json: bool) -> None:
    selection, scores, chosen = result.selection, result.scores, result.chosen_exit
    if as_json:
        exit_score = next((e for e in scores.exits if e.name == chosen), None) if scores else None
        emit_json({"status": "ok", "artifact": str(result.path), "recipe": result.recipe.name, "chosen_exit": chosen,
                   "metrics": exit_score, "vs_full": selection.vs_full if chosen else None,
                   "validation": {f"validate_{name}": v for name, v in result.validations.items()},
                   "stages": [{"name": r.name, "status": r.status, "reason": r.reason, "seconds": round(r.seconds, 2)}
                              for r in result.stages]})
        return
    table = Table(title=f"nfcompile build {result.recipe.name}")
    for column in ("stage", "status", "seconds", "note"):
        table.add_column(column)
    for record in result.stages:
        style = {"failed": "red", "skipped": "yellow"}.get(record.status, "")
        table.add_row(record.name, f"[{style}]{record.status}[/]" if style else record.status,
                      f"{record.seconds:.1f}", record.reason)
    stdout.print(table)
    if chosen:
        vs = selection.vs_full
        chosen_score = result.scores.get(chosen) if result.scores else None
        test = (f"; test accuracy {chosen_score.test_accuracy:.2%}"
                if chosen_score is not None and chosen_score.test_accuracy is not None else "")
        delta = vs.get("test_accuracy_delta")
        _say(f"chosen exit {chosen} (on the validation split): {selection.reason}{test}; vs this network's last exit: "
             f"{vs.get('param_reduction') or 0:.2f}x fewer parameters"
             + (f", test accuracy {delta * 100:+.2f} points" if delta is not None else ""))
    _say(f"bundle: {result.path}\nnext: nfcompile verify {result.path}")


# --------------------------------------------------------------------------- bundle commands


def show_verify(report, *, as_json: bool) -> None:
    if as_json:
        emit_json({"ok": report.ok, **report.to_dict()})
        return
    for label, names in (("changed", report.changed), ("missing", report.missing), ("extra", report.extra)):
        for name in names:
            _say(f"[red]{label}[/]: {name}")
    for check in report.parity:
        c = check.comparison
        _say(f"{'ok  ' if check.passed else '[red]FAIL[/]'} {check.model} vs {check.against}: max abs "
             f"error {c.max_abs_error:.3g}, top-1 agreement {c.top1_agreement:.2%} ({check.limit})")
    _say(f"{report.files_checked} files checked: "
         f"{'bundle intact' if report.ok else 'bundle does NOT match its manifest'}")


def show_bench(result, *, as_json: bool) -> None:
    if as_json:
        emit_json({"bundle": result.bundle, "model": result.model, "format": result.format, "runner": result.runner,
                   "latency": result.latency, "max_latency_ms": result.max_latency_ms, "table": result.table,
                   "load": result.load})
        return
    table = Table(title=f"{result.model} ({result.format}) on {result.runner}")
    for column in ("batch", "p50 ms", "p90 ms", "mean ms", "runs", "warm-up", "images/s"):
        table.add_column(column, justify="right")
    for lat in result.latency:
        table.add_row(str(lat.batch_size), f"{lat.p50_ms:.3f}", f"{lat.p90_ms:.3f}", f"{lat.mean_ms:.3f}",
                      str(lat.runs), str(lat.warmup), f"{lat.batch_size / lat.p50_ms * 1e3:.0f}")
    stdout.print(table)
    if result.load is not None:
        _say(f"machine load while timing: {result.load.describe()}")
        if result.load.loaded:
            _say("warning: timed on a loaded machine: these latencies carry the other processes' noise")
    if result.table is not None:
        _say(f"latency table for {result.table_exits} exits written to {result.table}; use it with "
             f"--set bench.table={result.table}")


def show_predictions(result, *, as_json: bool) -> None:
    if as_json:
        emit_json({"bundle": result.bundle, "model": result.model, "predictions": result.predictions})
        return
    for prediction in result.predictions:
        _say(f"{prediction.image}: " + ", ".join(f"{t['label']} {t['probability']:.1%}" for t in prediction.top))


def show_engine(run, *, as_json: bool) -> None:
    if as_json:
        emit_json({"bundle": run.bundle, "engine": run.engine, "validation": run.validation})
        return
    engine, comparison = run.engine, run.validation.comparison
    _say(f"engine {engine.path} built with TensorRT {engine.tensorrt_version} on {engine.gpu} ({engine.precision}), "
         f"top-1 agreement {comparison.top1_agreement:.2%} with PyTorch on {comparison.samples} held-out samples "
         f"(engine accuracy {comparison.candidate_accuracy:.2%}); manifest updated. "
         f"next: nfcompile bench {run.bundle} --backend tensorrt")
