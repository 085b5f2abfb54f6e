"""One function per CLI command. Loads the recipe, runs the pipeline or a stage, prints the results.

Results go to stdout (rich tables, or one JSON document with --json); logs go to stderr.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

from nfcompile.core.bytesize import format_bytes
from nfcompile.core.io import dumps_json, inside
from nfcompile.core.log import get_logger
from nfcompile.errors import GateFailed, InputError, NfcompileError, RecipeError, RunBusy
from nfcompile.recipe import Recipe, load_recipe, recipe_dict, recipe_hash, recipe_yaml

log = get_logger(__name__)
stdout = Console(soft_wrap=True)


def _emit_json(document: Any) -> None:
    print(dumps_json(document), end="")


def load_checked_recipe(path: Path, overrides: Iterable[str]) -> Recipe:
    """Schema, then what the schema cannot know: the architecture, the input size, the dataset."""
    from nfcompile.data import check_data
    from nfcompile.models import build_unit_net, unit_shapes_for

    recipe = load_recipe(path, overrides)
    # A user error found now costs seconds; found after training it costs the run.
    # A weights file is read now, weights_only (a crafted pickle is refused here, never run, and one
    # that does not fit the architecture fails in seconds); torchvision weights would need a download.
    pretrained = recipe.model.pretrained
    model = recipe.model if pretrained and not pretrained.startswith("torchvision:") else \
        recipe.model.model_copy(update={"pretrained": None})
    try:
        net = build_unit_net(model, recipe.model.num_classes or 10)
        unit_shapes_for(net, recipe.data.image_size)
        check_data(recipe.data)
    except RecipeError as exc:
        raise exc.in_file(str(path)) from None
    return recipe


# --------------------------------------------------------------------------- check / plan


def check(path: Path, overrides: Iterable[str], *, as_json: bool, list_archs: bool) -> Recipe:
    from nfcompile.data import list_datasets
    from nfcompile.models import list_adapters

    recipe = load_checked_recipe(path, overrides)
    if as_json:
        document: dict[str, Any] = {"recipe": recipe_dict(recipe), "recipe_sha256": recipe_hash(recipe)}
        if list_archs:
            document.update(archs=list_adapters(), datasets=list_datasets())
        _emit_json(document)
        return recipe
    stdout.print(f"# {path}: valid (sha256 {recipe_hash(recipe)[:16]})", highlight=False)
    stdout.print(recipe_yaml(recipe), end="", highlight=False, markup=False)
    if list_archs:
        stdout.print(f"# architectures: {', '.join(list_adapters())}", highlight=False)
        stdout.print(f"# datasets: {', '.join(list_datasets())}", highlight=False)
    return recipe


def plan(path: Path, overrides: Iterable[str], *, as_json: bool):
    """Profile and partition without training; nothing is written."""
    from nfcompile.core.device import resolve_device
    from nfcompile.core.repro import seed_everything
    from nfcompile.data import load_data
    from nfcompile.models import build_unit_net
    from nfcompile.stages.plan import plan_training

    recipe = load_checked_recipe(path, overrides)
    data = load_data(recipe.data, recipe.seed)
    seed_everything(recipe.seed)
    classes = recipe.model.num_classes or data.info.num_classes
    result = plan_training(build_unit_net(recipe.model, classes), classes, image_size=recipe.data.image_size,
                           train_samples=len(data.train), val_samples=len(data.val), budget=recipe.budget,
                           train=recipe.train, augment=recipe.data.augment, device=resolve_device(recipe.device))
    if as_json:
        _emit_json({"plan": result})
    else:
        stdout.print(plan_table(result))
    return result


def plan_table(plan, train=None) -> Table:
    measured = {b.index: b.measured_peak_bytes for b in train.blocks} if train is not None else {}
    table = Table(title=f"Memory plan: budget {format_bytes(plan.budget_bytes)} ({plan.budget_source}), "
                        f"device {plan.device}")
    for column in ("block", "units", "batch", "predicted peak", *(("measured peak",) if measured else ()),
                   "of budget", "output cache"):
        table.add_column(column, justify="right" if column not in ("units", "output cache") else "left")
    for block in plan.blocks:
        names = f"{plan.units[block.units[0]].name} .. {plan.units[block.units[-1]].name}" \
            if len(block.units) > 1 else plan.units[block.units[0]].name
        row = [str(block.index), f"{block.units[0]}-{block.units[-1]} ({names})", str(block.batch_size),
               format_bytes(block.predicted_peak_bytes)]
        if measured:
            row.append(format_bytes(measured.get(block.index)))
        row += [f"{block.predicted_peak_bytes / plan.budget_bytes:.0%}",
                f"{block.cache_placement} {format_bytes(block.cache_bytes) if block.cache_bytes else ''}".strip()]
        table.add_row(*row)
    table.caption = (f"backprop at this budget: batch {plan.backprop_batch_size or 'none fits'}; with gradient "
                     f"checkpointing: batch {plan.checkpointing_batch_size or 'none fits'}; "
                     f"batch 1 needs {format_bytes(plan.min_budget_bytes)}")
    return table


# --------------------------------------------------------------------------- build / train / select / export


def _run_folder(recipe: Recipe, out_dir: Path, *, resume: bool, run_dir: Path | None, need_stage: str | None = None):
    from nfcompile.pipeline import RunFolder, recipe_folder

    if run_dir is not None:
        run = RunFolder(Path(run_dir))
        try:
            is_run = run.state.is_dir()
        except OSError as exc:  # a name too long, a folder we may not enter
            raise InputError(f"--run {run_dir}: {exc.strerror or exc}") from None
        if not is_run:
            raise InputError(f"--run {run_dir}: not an nfcompile run folder (no state/)")
        if run.finished:
            raise InputError(f"--run {run_dir}: a finished bundle; it is not built into again",
                             hint="start a new run, or use `nfcompile select --run` to inspect it")
        return run, True
    if resume or need_stage:
        run = RunFolder.find(out_dir, recipe.name, unfinished_only=True)
        if run is not None:
            log.info("continuing %s", run.path)
            return run, True
        if need_stage:
            raise InputError(f"no unfinished run of {recipe.name!r} in {out_dir}",
                             hint=f"run `nfcompile train` first (this command continues after the {need_stage} stage)")
        log.info("no unfinished run of %r in %s: starting a new one", recipe.name, out_dir)
    recipe_folder(out_dir, recipe.name)
    return RunFolder.create(out_dir, recipe.name), False


def _run(path: Path, overrides: tuple[str, ...], *, out_dir: Path, resume: bool, run_dir: Path | None,
         until: str | None, need_stage: str | None = None):
    from nfcompile.pipeline import run_pipeline

    recipe = load_checked_recipe(path, overrides)
    run, continuing = _run_folder(recipe, out_dir, resume=resume, run_dir=run_dir, need_stage=need_stage)
    try:
        build = run_pipeline(recipe, run, resume=continuing, until=until, recipe_source=str(path),
                             overrides=overrides)
    except RunBusy:
        raise  # another process's run: neither kept nor discarded by this one
    except BaseException as exc:
        _keep_or_discard(run, exc)
        raise
    return recipe, run, build


def _keep_or_discard(run, exc: BaseException) -> None:
    """A run that finished no stage holds nothing worth resuming: remove it, leave nothing half-written.
    Otherwise keep it (marked .partial) so `--resume` continues where it stopped."""
    from nfcompile.core.io import read_json

    kept = [p for p in run.state.glob("*.json") if p.name != "recipe.json"
            and read_json(p).get("status") in ("ok", "skipped", "reused")] if run.state.is_dir() else []
    if not kept and not (run.path / "checkpoint" / "checkpoint.pt").exists():
        shutil.rmtree(run.path, ignore_errors=True)
    elif not isinstance(exc, KeyboardInterrupt):
        log.info("unfinished run kept at %s; fix the cause and continue with --resume", run.path)


def build(path: Path, overrides: tuple[str, ...], *, out_dir: Path, resume: bool, run_dir: Path | None,
          as_json: bool) -> Path:
    recipe, run, result = _run(path, overrides, out_dir=out_dir, resume=resume, run_dir=run_dir, until=None)
    finished = run.finish()
    _report_build(recipe, result, finished.path, as_json)
    return finished.path


def export(path: Path, overrides: tuple[str, ...], *, out_dir: Path, run_dir: Path | None, as_json: bool) -> Path:
    """Continue a trained run (from `nfcompile train`) through every stage after training."""
    recipe, run, result = _run(path, overrides, out_dir=out_dir, resume=True, run_dir=run_dir, until=None,
                               need_stage="train")
    if result.records["train"].status != "reused":
        log.info("training ran in this call: the run had no finished training for this recipe")
    finished = run.finish()
    _report_build(recipe, result, finished.path, as_json)
    return finished.path


def train(path: Path, overrides: tuple[str, ...], *, out_dir: Path, resume: bool, run_dir: Path | None,
          as_json: bool):
    recipe, run, result = _run(path, overrides, out_dir=out_dir, resume=resume, run_dir=run_dir, until="train")
    plan_result, train_result = result.results["plan"], result.results["train"]
    if as_json:
        _emit_json({"run": str(run.path), "plan": plan_result, "train": train_result})
        return train_result
    stdout.print(plan_table(plan_result, train_result))
    stdout.print(training_table(train_result))
    stdout.print(f"run folder: {run.path}\nnext: nfcompile export {path} (or nfcompile select {path})",
                 highlight=False)
    return train_result


def training_table(train) -> Table:
    table = Table(title=f"Training ({train.method}, {train.seconds:.1f} s)")
    for column in ("block", "units", "batch", "epochs", "stopped", "best val. accuracy", "measured peak", "seconds"):
        table.add_column(column)
    for b in train.blocks:
        table.add_row(str(b.index), f"{b.units[0]}-{b.units[-1]}", str(b.batch_size), str(b.epochs_run),
                      b.stop_reason, f"{max(b.best_val_accuracy) * 100:.2f}%" if b.best_val_accuracy else "-",
                      format_bytes(b.measured_peak_bytes), f"{b.seconds + b.cache_seconds:.1f}")
    return table


def select(path: Path, overrides: tuple[str, ...], *, out_dir: Path, run_dir: Path | None, as_json: bool):
    """Selection again over scored exits, with this recipe's select section; training is never rerun.

    On an unfinished run the score and select stages run (or are reused) there. On a finished bundle
    nothing is written: the stored scores are re-judged and printed.
    """
    from nfcompile.core.io import read_json
    from nfcompile.core.results import ExitScores
    from nfcompile.pipeline import RunFolder
    from nfcompile.stages.select import exits_table, select_exit

    recipe = load_checked_recipe(path, overrides)
    run = RunFolder(run_dir) if run_dir else (RunFolder.find(out_dir, recipe.name, unfinished_only=True)
                                              or RunFolder.find(out_dir, recipe.name, unfinished_only=False))
    if run is None or not run.record_path("train").is_file():
        raise InputError(f"no trained run of {recipe.name!r} in {out_dir}", hint="run `nfcompile train` first")
    if run.finished:
        scores = ExitScores.from_dict(read_json(run.record_path("score"))["result"])
        selection = select_exit(scores, recipe.select)
    else:
        _, run, result = _run(path, overrides, out_dir=out_dir, resume=True, run_dir=run.path, until="select")
        scores, selection = result.results["score"], result.results["select"]
    if as_json:
        _emit_json({"run": str(run.path), "scores": scores, "selection": selection})
    else:
        stdout.print(exits_table(scores, selection))
        stdout.print(f"chosen: {selection.chosen} — {selection.reason}", highlight=False)
    return selection


def _report_build(recipe: Recipe, build, bundle: Path, as_json: bool) -> None:
    from nfcompile.core.results import Selection

    records = [build.records[name] for name in build.records]
    selection = build.results.get("select")
    chosen = selection.chosen if isinstance(selection, Selection) else None
    if as_json:
        scores = build.results.get("score")
        exit_score = next((e for e in scores.exits if e.name == chosen), None) if scores else None
        _emit_json({"status": "ok", "artifact": str(bundle), "recipe": recipe.name, "chosen_exit": chosen,
                    "metrics": exit_score, "vs_full": selection.vs_full if chosen else None,
                    "validation": {k: build.results[k] for k in ("validate_fp32", "validate_int8", "validate_engine")
                                   if build.results.get(k) is not None},
                    "stages": [{"name": r.name, "status": r.status, "reason": r.reason, "seconds": round(r.seconds, 2)}
                               for r in records]})
        return
    table = Table(title=f"nfcompile build {recipe.name}")
    for column in ("stage", "status", "seconds", "note"):
        table.add_column(column)
    for record in records:
        style = {"failed": "red", "skipped": "yellow"}.get(record.status, "")
        table.add_row(record.name, f"[{style}]{record.status}[/]" if style else record.status,
                      f"{record.seconds:.1f}", record.reason)
    stdout.print(table)
    if chosen:
        vs = selection.vs_full
        stdout.print(f"chosen exit {chosen}: {selection.reason}; vs full model: "
                     f"{vs.get('param_reduction') or 0:.2f}x fewer parameters", highlight=False)
    stdout.print(f"bundle: {bundle}\nnext: nfcompile verify {bundle}", highlight=False)


# --------------------------------------------------------------------------- bundle commands


def verify(bundle: Path, *, parity: bool, as_json: bool):
    from nfcompile.stages.bundle import verify_bundle

    report = verify_bundle(bundle, parity=parity)
    if as_json:
        _emit_json({"ok": report.ok, **report.to_dict()})
    else:
        for label, names in (("changed", report.changed), ("missing", report.missing), ("extra", report.extra)):
            for name in names:
                stdout.print(f"[red]{label}[/]: {name}", highlight=False)
        for check in report.parity:
            c = check.comparison
            stdout.print(f"{'ok  ' if check.passed else '[red]FAIL[/]'} {check.model} vs {check.against}: max abs "
                         f"error {c.max_abs_error:.3g}, top-1 agreement {c.top1_agreement:.2%} ({check.limit})",
                         highlight=False)
        stdout.print(f"{report.files_checked} files checked: "
                     f"{'bundle intact' if report.ok else 'bundle does NOT match its manifest'}", highlight=False)
    if not report.ok:
        problems = [f"{len(names)} {label}" for label, names in
                    (("changed", report.changed), ("missing", report.missing), ("extra", report.extra)) if names]
        problems += [f"parity failed for {p.model} vs {p.against}" for p in report.parity if not p.passed]
        raise GateFailed(f"{bundle}: verification failed: {', '.join(problems)} "
                         f"(first: {(report.changed + report.missing + report.extra + ('',))[0] or 'parity'})")
    return report


def bench(bundle: Path, *, backend: str | None, which: str, batch_sizes: tuple[int, ...], warmup: int | None,
          repeats: int | None, max_latency_ms: float | None, emit_table: Path | None, as_json: bool):
    from nfcompile.recipe.schema import BenchSection, TensorRTSection
    from nfcompile.stages.bundle import load_manifest
    from nfcompile.stages.score.timing import time_onnx

    manifest = load_manifest(bundle)
    recipe = manifest["recipe"]
    section = BenchSection.model_validate({**{k: v for k, v in recipe["bench"].items() if k != "table"},
                                           **({"backend": backend} if backend else {}),
                                           **({"batch_sizes": batch_sizes} if batch_sizes else {}),
                                           **({"warmup": warmup} if warmup is not None else {}),
                                           **({"repeats": repeats} if repeats is not None else {})})
    tensorrt = TensorRTSection.model_validate({**recipe["tensorrt"], "timing_cache": None})
    model = manifest["model"]["onnx" if which == "fp32" else "int8"]
    if model is None:
        raise InputError(f"{bundle}: has no {which} model")
    engine_dir = _scratch_dir(bundle)
    try:
        timing = time_onnx(inside(bundle, model["path"]), tuple(manifest["model"]["io"]["input"]["shape"][1:]),
                           section, tensorrt=tensorrt, engine_dir=engine_dir)
        table = None
        if emit_table is not None:
            from nfcompile.stages.score import EXITS_DIR, emit_latency_table

            table = emit_latency_table(Path(bundle) / EXITS_DIR, emit_table, section, tensorrt=tensorrt,
                                       engine_dir=engine_dir)
    finally:
        shutil.rmtree(engine_dir, ignore_errors=True)
    smallest = min(timing.latency, key=lambda lat: lat.batch_size)
    if as_json:
        _emit_json({"bundle": str(bundle), "model": model["path"], "runner": timing.runner, "latency": timing.latency,
                    "max_latency_ms": max_latency_ms, "table": str(emit_table) if table else None})
    else:
        result = Table(title=f"{model['path']} on {timing.runner}")
        for column in ("batch", "p50 ms", "p90 ms", "mean ms", "runs", "warm-up", "images/s"):
            result.add_column(column, justify="right")
        for lat in timing.latency:
            result.add_row(str(lat.batch_size), f"{lat.p50_ms:.3f}", f"{lat.p90_ms:.3f}", f"{lat.mean_ms:.3f}",
                           str(lat.runs), str(lat.warmup), f"{lat.batch_size / lat.p50_ms * 1e3:.0f}")
        stdout.print(result)
        if table is not None:
            stdout.print(f"latency table for {len(table.exits)} exits written to {emit_table}; use it with "
                         f"--set bench.table={emit_table}", highlight=False)
    if max_latency_ms is not None and smallest.p50_ms > max_latency_ms:
        raise GateFailed(f"{model['path']}: p50 latency {smallest.p50_ms:.3f} ms at batch {smallest.batch_size} "
                         f"exceeds --max-latency-ms {max_latency_ms:g} on {timing.runner}")
    return timing


def _scratch_dir(bundle: Path) -> Path:
    """Engines built for timing go beside the bundle, never into it (its files are hashed)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=".bench-", dir=Path(bundle).parent))


def predict(bundle: Path, images: tuple[Path, ...], *, top_k: int, which: str, as_json: bool):
    import numpy as np

    from nfcompile.data import Preprocessing, decode_image
    from nfcompile.runtime import OrtRunner
    from nfcompile.stages.bundle import load_manifest

    manifest = load_manifest(bundle)
    pre = manifest["preprocessing"]
    preprocessing = Preprocessing(image_size=pre["image_size"], mean=tuple(pre["mean"]), std=tuple(pre["std"]))
    labels = manifest["labels"]
    model = manifest["model"]["onnx" if which == "fp32" else "int8"]
    if model is None:
        raise InputError(f"{bundle}: has no {which} model")
    batch = np.stack([preprocessing.normalize(decode_image(p, preprocessing.image_size)[None]).numpy()[0]
                      for p in images])
    with OrtRunner(inside(bundle, model["path"])) as runner:
        logits = runner.infer({runner.input_names[0]: batch})[runner.output_names[0]]
    if logits.shape[1] != len(labels):
        raise InputError(f"{bundle}: the model gives {logits.shape[1]} scores but the manifest has {len(labels)} "
                         "labels", hint=f"check the bundle with `nfcompile verify {bundle}`")
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    k = min(top_k, len(labels))
    results = []
    for path, row in zip(images, probabilities):
        order = np.argsort(-row)[:k]
        results.append({"image": str(path), "top": [{"label": labels[i], "index": int(i),
                                                     "probability": float(row[i])} for i in order]})
    if as_json:
        _emit_json({"bundle": str(bundle), "model": model["path"], "predictions": results})
    else:
        for result in results:
            stdout.print(f"{result['image']}: " + ", ".join(f"{t['label']} {t['probability']:.1%}"
                                                              for t in result["top"]), highlight=False)
    return results


def engine(bundle: Path, *, precision: str | None, as_json: bool):
    """Build the TensorRT engine on this device from the bundle's ONNX, check it against the outputs
    PyTorch gave at build time, and record it in the bundle's manifest."""
    import time

    import numpy as np

    from nfcompile.core.results import Validation
    from nfcompile.errors import StageSkipped
    from nfcompile.recipe.schema import TensorRTSection, ValidateSection
    from nfcompile.runtime.compare import comparison_from_outputs
    from nfcompile.stages.bundle import REFERENCE_DIR, load_manifest, record_engine
    from nfcompile.stages.engine import build_engine
    from nfcompile.stages.validate import engine_checks, require_passed

    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    recipe = manifest["recipe"]
    section = TensorRTSection.model_validate({**recipe["tensorrt"], "timing_cache": None, "enabled": True,
                                              **({"precision": precision} if precision else {})})
    int8 = manifest["model"]["int8"]
    started = time.perf_counter()
    try:
        result = build_engine(inside(bundle, manifest["model"]["onnx"]["path"]),
                              inside(bundle, int8["path"]) if int8 else None,
                              section, out_dir=bundle)
    except StageSkipped as skip:
        raise NfcompileError(f"cannot build a TensorRT engine on this machine: {skip.reason}",
                             hint="run `nfcompile engine` on the target device, with nfcompile[tensorrt] installed")
    from nfcompile.runtime.tensorrt import TrtRunner

    inputs = np.load(bundle / REFERENCE_DIR / "inputs.npy", allow_pickle=False)
    expected = np.load(bundle / REFERENCE_DIR / "pytorch.npy", allow_pickle=False)
    validate = ValidateSection.model_validate(recipe["validate"])
    with TrtRunner(bundle / result.path) as runner:
        low, high = runner.batch_range
        batch = max(low, min(high, len(inputs)))
        count = len(inputs) - len(inputs) % batch
        outputs = np.concatenate([runner.infer({runner.input_names[0]: inputs[i:i + batch]})[runner.output_names[0]]
                                  for i in range(0, count, batch)])
    comparison = comparison_from_outputs(expected[:count], outputs, None, atol=validate.engine_atol,
                                         rtol=validate.rtol, reference="PyTorch at build time",
                                         candidate=f"TensorRT {result.precision}")
    checks = tuple(engine_checks(comparison, validate))
    validation = Validation("engine", comparison, checks)
    require_passed(checks, "TensorRT engine vs PyTorch")
    record_engine(bundle, result, validation, time.perf_counter() - started)
    if as_json:
        _emit_json({"bundle": str(bundle), "engine": result, "validation": validation})
    else:
        stdout.print(f"engine {result.path} built with TensorRT {result.tensorrt_version} on {result.gpu} "
                     f"({result.precision}), top-1 agreement {comparison.top1_agreement:.2%} with PyTorch; "
                     f"manifest updated. next: nfcompile bench {bundle} --backend tensorrt", highlight=False)
    return result
