"""The build: every stage in order, each recorded, each resumable. Only this module knows the order.

A run lives in ``<out>/<recipe-name>/<run-id>.partial/`` until its last stage finishes, then the
folder is renamed to ``<run-id>/`` in one step: a bundle folder without ``.partial`` is complete.
Every stage has a fingerprint: the recipe fields it reads plus the fingerprint of the stage before
it. On ``--resume`` a stage whose fingerprint is unchanged is reused from ``state/``; the first
stage whose fields changed, and everything after it, runs again. Training resumes inside the stage
from its last finished block.

Several processes (a torchrun job): rank 0 runs this pipeline; the plan it makes is sent to the
other ranks when training starts, every rank trains (`follow_pipeline`), and the others then wait
for rank 0 to finish scoring, exporting and bundling, and exit.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import numpy as np
import torch

from nfcompile.core import distributed as dist
from nfcompile.core.device import cpu_threads
from nfcompile.core.io import read_json, remove_scratch, write_json
from nfcompile.core.log import get_logger
from nfcompile.core.repro import seed_everything
from nfcompile.core.tensorboard import TENSORBOARD_DIR, event_log, log_scalars
from nfcompile.core.results import (DeliverableLatency, EngineResult, ExitScores, OnnxExport, OrtExport, Plan,
                                    PruneResult, QuantResult, Result, Selection, StageRecord, TrainResult, Validation)
from nfcompile.errors import InputError, NfcompileError, RecipeError, StageSkipped
from nfcompile.formats import FORMATS
from nfcompile.recipe import Recipe, fingerprint, recipe_dict
from nfcompile.runs import LOCK_FILE, RunFolder

log = get_logger(__name__)

CHECKPOINT_DIR = "checkpoint"


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    name: str
    fields: tuple[str, ...]  # dotted recipe fields it reads ("bench.backend", or a whole section "train")
    run: Callable[["Build"], Result | None]
    result_type: type[Result] | None = None
    always: bool = False  # cheap and summarizing: never reused
    # Raised when the stage writes something else for the same recipe: a run resumed from an earlier
    # version's files redoes this stage and those after it instead of reusing them.
    version: int = 1


# Fields a stage reads only in some recipes, named "field@condition": scoring quantizes every exit
# only where selection uses INT8 latency; quantize.activations auto picks the INT8 form by where the
# model runs (the bench backend, a TensorRT INT8 engine).
ONLY_WHEN: dict[str, Callable[[Recipe], bool]] = {"int8-latency": lambda r: r.select.latency_format == "int8",
                                                  "auto-activations": lambda r: r.quantize.activations == "auto"}


def _recipe_fields(recipe: Recipe, fields: tuple[str, ...]) -> dict[str, Any]:
    data = recipe_dict(recipe)
    picked = {}
    for dotted in fields:
        dotted, _, condition = dotted.partition("@")
        if condition and not ONLY_WHEN[condition](recipe):
            continue
        value: Any = data
        for key in dotted.split("."):
            value = value[key]
        picked[dotted] = value
    return picked


@dataclass
class Build:
    """One run of the pipeline over one recipe in one run folder."""

    recipe: Recipe
    run: RunFolder
    resume: bool
    recipe_source: str = ""
    overrides: tuple[str, ...] = ()
    results: dict[str, Any] = field(default_factory=dict)
    records: dict[str, StageRecord] = field(default_factory=dict)

    # -- shared inputs, loaded when a stage first needs them --------------------------------------

    @cached_property
    def device(self) -> torch.device:
        from nfcompile.core.device import resolve_device

        return dist.local_device(resolve_device(self.recipe.device))

    @cached_property
    def data(self):
        from nfcompile.data import load_data

        return load_data(self.recipe.data, self.recipe.seed)

    @cached_property
    def num_classes(self) -> int:
        return self.recipe.model.num_classes or self.data.info.num_classes

    def fresh_unit_net(self):
        from nfcompile.models import build_unit_net

        seed_everything(self.recipe.seed)
        return build_unit_net(self.recipe.model, self.num_classes)

    @cached_property
    def trained_net(self):
        """The trained multi-exit net, from the training checkpoint (weights_only)."""
        from nfcompile.core.io import load_checkpoint
        from nfcompile.models import multi_exit_from_state

        state = load_checkpoint(self.run.path / CHECKPOINT_DIR / self.results["train"].checkpoint)
        return multi_exit_from_state(state["net"], self.recipe.model).eval()

    def chosen_exit_model(self) -> torch.nn.Module:
        """The exit to export: the pruned one when pruning ran, else the chosen exit as trained."""
        prune = self.results.get("prune")
        if isinstance(prune, PruneResult):
            from nfcompile.stages.prune import pruned_exit_from_checkpoint

            return pruned_exit_from_checkpoint(self.run.path / CHECKPOINT_DIR / prune.checkpoint,
                                               self.trained_net, self.results["select"].unit)
        return self.trained_net.exit_net(self.results["select"].unit).eval()

    def test_arrays(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        test = self.data.test
        x = self.data.preprocessing.normalize(test.images).numpy()
        y = test.labels.numpy()
        return (x[:limit], y[:limit]) if limit else (x, y)

    def calibration_array(self, count: int) -> np.ndarray:
        from nfcompile.data import calibration_array

        return calibration_array(self.data, count, self.recipe.seed)

    # -- running ----------------------------------------------------------------------------------

    def execute(self, stages: list[Stage], until: str | None = None) -> None:
        self.run.state.mkdir(parents=True, exist_ok=True)
        previous = fingerprint({"nfcompile.pipeline": 1})
        for index, stage in enumerate(stages, start=1):
            key = {"stage": stage.name, "fields": _recipe_fields(self.recipe, stage.fields), "upstream": previous}
            stage_fp = fingerprint(key if stage.version == 1 else {**key, "version": stage.version})
            previous = stage_fp
            reused = None if stage.always else self._reusable(stage, stage_fp)
            if reused is not None:
                self.results[stage.name] = (reused.result_as(stage.result_type, source=str(self.run.record_path(stage.name)))
                                            if stage.result_type is not None else None)
                self.records[stage.name] = reused
                log.info("[%d/%d] %s: reused (%s)", index, len(stages), stage.name,
                         "unchanged" if reused.status != "skipped" else f"skipped: {reused.reason}")
            else:
                self._run_stage(stage, stage_fp, index, len(stages))
            if stage.name == until:
                return

    def _reusable(self, stage: Stage, stage_fp: str) -> StageRecord | None:
        if not self.resume or not self.run.record_path(stage.name).is_file():
            return None
        record = self.run.read_record(stage.name)
        if record.fingerprint != stage_fp or record.status not in ("ok", "skipped", "reused"):
            return None
        if any(not (self.run.path / name).exists() for name in record.files):
            return None
        return StageRecord(record.name, record.status if record.status == "skipped" else "reused", record.reason,
                           record.seconds, record.files, record.fingerprint, record.result)

    def _run_stage(self, stage: Stage, stage_fp: str, index: int, count: int) -> None:
        log.info("[%d/%d] %s", index, count, stage.name)
        started = time.perf_counter()
        status, reason, result = "ok", "", None
        try:
            result = stage.run(self)
        except StageSkipped as skip:
            status, reason = "skipped", skip.reason
            log.info("%s: skipped: %s", stage.name, skip.reason)
        except BaseException as exc:
            seconds = time.perf_counter() - started
            failure = str(exc) if isinstance(exc, NfcompileError) else f"{type(exc).__name__}: {exc}"
            measured = self.results.get(stage.name)  # a failed gate keeps the numbers it judged
            # On a full disk the record cannot be written either: the stage's own error is the one to show.
            with contextlib.suppress(NfcompileError):
                self._record(StageRecord(stage.name, "failed",
                                         failure.splitlines()[0] if failure else type(exc).__name__, seconds, (),
                                         stage_fp, measured.to_dict() if isinstance(measured, Result) else None),
                             persist=not stage.always)
            raise
        files = tuple(sorted(_files_of(result)))
        self.results[stage.name] = result
        self._record(StageRecord(stage.name, status, reason, time.perf_counter() - started, files, stage_fp,
                                 result.to_dict() if isinstance(result, Result) else None),
                     persist=not stage.always)

    def _record(self, record: StageRecord, *, persist: bool) -> None:
        """``persist``: write state/<stage>.json. The bundle stage is not persisted: it runs every time,
        and a file written after the manifest would be a file the manifest does not cover."""
        self.records[record.name] = record
        if persist:
            write_json(self.run.record_path(record.name), record)


def _files_of(result: Any) -> list[str]:
    """Files a stage result names (relative to the run folder): they must exist to reuse the stage."""
    if isinstance(result, (OnnxExport, QuantResult, EngineResult)):
        return [result.path]
    if isinstance(result, OrtExport):
        return [result.path, result.mobile_check]
    if isinstance(result, TrainResult):
        return [f"{CHECKPOINT_DIR}/{result.checkpoint}"]
    if isinstance(result, PruneResult):
        return [f"{CHECKPOINT_DIR}/{result.checkpoint}"]
    if isinstance(result, ExitScores):
        return sorted({f for e in (*result.exits, result.full_model) for f in (e.onnx_file, e.int8_file) if f})
    return []


# --------------------------------------------------------------------------- the stages


def _plan(build: Build) -> Plan:
    from nfcompile.learning.parallel import shard_length
    from nfcompile.stages.plan import plan_training
    from nfcompile.stages.plan.profile_cache import ProfileCache

    recipe = build.recipe
    if recipe.train.method == "gradient_filter":
        raise StageSkipped("train.method gradient_filter fine-tunes a trained model's last layers; "
                           "no NeuroFlux memory plan")
    return plan_training(build.fresh_unit_net(), build.num_classes, image_size=recipe.data.image_size,
                         # The budget is per process: caches hold one rank's shard.
                         train_samples=shard_length(len(build.data.train)),
                         val_samples=shard_length(len(build.data.monitor)),
                         budget=recipe.budget, train=recipe.train, augment=recipe.data.augment, device=build.device,
                         cache=ProfileCache.for_recipe(recipe.train.neuroflux.reuse_profiles))


def _train(build: Build) -> TrainResult:
    job = {"plan": build.results["plan"], "resume": build.resume, "fingerprint": build.records["plan"].fingerprint}
    dist.broadcast_object(job)  # several processes: the others train with this plan too
    outcome = _train_rank(build, job, build.run.path / CHECKPOINT_DIR)
    build.__dict__["trained_net"] = outcome.net.eval()
    return outcome.result


def _train_rank(build: Build, job: dict[str, Any], out_dir):
    from nfcompile.stages.train import train_model

    recipe = build.recipe
    return train_model(build.fresh_unit_net(), job["plan"], build.data, model=recipe.model, train=recipe.train,
                       augment=recipe.data.augment, budget=recipe.budget, device=build.device, seed=recipe.seed,
                       out_dir=out_dir, resume=job["resume"], fingerprint=job["fingerprint"])


def _score(build: Build) -> ExitScores:
    from nfcompile.stages.score import score_exits

    recipe = build.recipe
    # Selection decides on the validation split; the test split only measures (the report's headline).
    return score_exits(build.trained_net, build.results["train"].exit_units, build.data.val,
                       build.data.preprocessing, bench=recipe.bench, export=recipe.export, out_dir=build.run.path,
                       device=build.device, tensorrt=recipe.tensorrt, test=build.data.test,
                       quantizer=_exit_quantizer(build) if recipe.select.latency_format == "int8" else None)


def _exit_quantizer(build: Build):
    """Every exit's INT8 QDQ graph, made as the quantize stage makes the deliverable's (same settings)."""
    from nfcompile.stages.quantize import quantize_int8

    section = build.recipe.quantize
    if not section.enabled:
        raise NfcompileError("select.latency_format int8 times every exit's INT8 graph, and quantize.enabled "
                             "is false", hint="set quantize.enabled: true, or select.latency_format: fp32")
    calibration = build.calibration_array(section.calibration_samples)
    activations = _int8_activations(build)
    return lambda onnx_path, folder: folder / quantize_int8(onnx_path, section, calibration_inputs=calibration,
                                                             out_dir=folder, activations=activations).path


def _select(build: Build) -> Selection:
    from nfcompile.stages.select import plot_pareto, select_exit, write_exits_json

    scores = build.results["score"]
    selection = select_exit(scores, build.recipe.select)
    write_exits_json(scores, selection, build.run.path / "exits.json")
    for score in (*scores.exits, scores.full_model):
        log_scalars(f"exits/{score.name}", 0, {"val_accuracy": score.accuracy, "test_accuracy": score.test_accuracy,
                                               "params": score.params, "onnx_bytes": score.onnx_bytes,
                                               **{f"p50_ms_batch{lat.batch_size}": lat.p50_ms for lat in score.latency}})
    plot_pareto(scores, selection, build.run.path / "pareto.png")
    return selection


def _prune(build: Build) -> PruneResult:
    if not build.recipe.prune.enabled:
        raise StageSkipped("prune.enabled is false")
    from nfcompile.stages.prune import prune_chosen_exit

    return prune_chosen_exit(build.trained_net, build.results["select"].unit, build.data, build.recipe.prune,
                             build.recipe.train, device=build.device, seed=build.recipe.seed,
                             out_dir=build.run.path / CHECKPOINT_DIR, export=build.recipe.export)


def onnx_metadata(build: Build) -> dict[str, str]:
    import json

    selection = build.results["select"]
    return {"nfcompile.recipe": build.recipe.name, "nfcompile.exit": selection.chosen,
            "nfcompile.unit": str(selection.unit),
            "nfcompile.preprocessing": json.dumps(build.data.preprocessing.to_dict(), sort_keys=True),
            "nfcompile.labels": json.dumps(list(build.data.info.class_names))}


def _export(build: Build) -> OnnxExport:
    from nfcompile.stages.export import export_exit

    size = build.recipe.data.image_size
    inputs, _ = build.test_arrays(limit=64)
    return export_exit(build.chosen_exit_model(), build.recipe.export, input_shape=(3, size, size),
                       out_dir=build.run.path, metadata=onnx_metadata(build), check_inputs=inputs)


def _upstream(build: Build, stage: str, kind: type, what: str):
    """The result a validation needs, or a skip that says why it is not there."""
    result = build.results.get(stage)
    if not isinstance(result, kind):
        record = build.records[stage]
        raise StageSkipped(f"no {what} ({stage} {record.status}: {record.reason})")
    return result


def _judged(build: Build, stage: str, validation: Validation, what: str) -> Validation:
    from nfcompile.stages.validate import require_passed

    build.results[stage] = validation  # kept in the stage record even when a gate fails
    require_passed(validation.checks, what)
    return validation


def _ort_format(build: Build) -> OrtExport:
    if not build.recipe.export.ort_format:
        raise StageSkipped("export.ort_format is false")
    from nfcompile.stages.export.ort import ort_from_onnx

    return ort_from_onnx(build.run.path / build.results["export"].path, build.run.path)


def _validate_ort(build: Build) -> Validation:
    from nfcompile.runtime.compare import compare_runners
    from nfcompile.runtime.ort_runner import OrtRunner
    from nfcompile.runtime.torch_runner import TorchRunner
    from nfcompile.stages.validate import fp32_checks

    ort_model = _upstream(build, "ort_format", OrtExport, "ORT format model")
    section = build.recipe.validation
    inputs, labels = build.test_arrays(limit=section.samples)
    candidate = OrtRunner(build.run.path / ort_model.path)
    candidate.name = f"{candidate.name} {ort_model.path}"
    comparison = compare_runners(TorchRunner(build.chosen_exit_model()), candidate, inputs, labels,
                                 atol=section.atol, rtol=section.rtol, batch_size=64)
    validation = Validation("ort", comparison, tuple(fp32_checks(comparison, section)))
    return _judged(build, "validate_ort", validation, "ORT format model vs PyTorch")


def _validate_fp32(build: Build) -> Validation:
    from nfcompile.stages.validate import fp32_checks, validate_onnx

    inputs, labels = build.test_arrays()
    comparison = validate_onnx(build.chosen_exit_model(), build.run.path / build.results["export"].path,
                               build.recipe.validation, inputs=inputs, labels=labels)
    validation = Validation("fp32", comparison, tuple(fp32_checks(comparison, build.recipe.validation)))
    return _judged(build, "validate_fp32", validation, "FP32 ONNX vs PyTorch")


def _quantize(build: Build) -> QuantResult:
    from nfcompile.stages.quantize import quantize_int8

    section = build.recipe.quantize
    if not section.enabled:
        raise StageSkipped("quantize.enabled is false")
    return quantize_int8(build.run.path / build.results["export"].path, section,
                         calibration_inputs=build.calibration_array(section.calibration_samples),
                         out_dir=build.run.path, activations=_int8_activations(build))


def _int8_activations(build: Build) -> str:
    from nfcompile.stages.quantize import activation_format

    recipe = build.recipe
    return activation_format(recipe.quantize, bench_backend=recipe.bench.backend, tensorrt=recipe.tensorrt)


def _validate_int8(build: Build) -> Validation:
    from nfcompile.stages.validate import int8_checks, validate_onnx

    quant = _upstream(build, "quantize", QuantResult, "INT8 model")
    inputs, labels = build.test_arrays()
    comparison = validate_onnx(build.chosen_exit_model(), build.run.path / quant.path, build.recipe.validation,
                               inputs=inputs, labels=labels)
    validation = Validation("int8", comparison, tuple(int8_checks(comparison, build.recipe.quantize)))
    return _judged(build, "validate_int8", validation, "INT8 ONNX vs PyTorch")


def _bench(build: Build) -> DeliverableLatency:
    """The chosen exit's deliverables timed side by side on the bench backend (ONNX Runtime formats)."""
    from nfcompile.stages.score import time_deliverables

    recipe = build.recipe
    if build.recipe.bench.table is not None or recipe.bench.backend == "tensorrt":
        raise StageSkipped(f"bench.backend {recipe.bench.backend}" + (" with a latency table" if recipe.bench.table
                           else "") + ": the deliverables are timed on the target (`nfcompile bench`)")
    files, accuracy = {}, {}
    for entry in FORMATS:
        result, validation = build.results.get(entry.produced_by), build.results.get(entry.validated_by)
        if entry.onnx_runtime and isinstance(result, Result) and hasattr(result, "path"):
            files[entry.name] = result.path
            accuracy[entry.name] = (validation.comparison.candidate_accuracy
                                    if isinstance(validation, Validation) else None)
    size = recipe.data.image_size
    return time_deliverables(build.run.path, files, accuracy, (3, size, size), recipe.bench)


def _engine(build: Build) -> EngineResult:
    from nfcompile.stages.engine import build_engine

    quant = build.results.get("quantize")
    return build_engine(build.run.path / build.results["export"].path,
                        build.run.path / quant.path if isinstance(quant, QuantResult) else None,
                        build.recipe.tensorrt, out_dir=build.run.path)


def _validate_engine(build: Build) -> Validation:
    from nfcompile.stages.validate import engine_checks, validate_engine

    engine = _upstream(build, "engine", EngineResult, "engine")
    inputs, labels = build.test_arrays()
    comparison = validate_engine(build.chosen_exit_model(), build.run.path / engine.path, build.recipe.validation,
                                 inputs=inputs, labels=labels)
    validation = Validation("engine", comparison, tuple(engine_checks(comparison, build.recipe.validation)))
    return _judged(build, "validate_engine", validation, "TensorRT engine vs PyTorch")


def _bundle(build: Build):
    from nfcompile.core.device import device_fingerprint, library_versions
    from nfcompile.recipe import recipe_hash
    from nfcompile.stages.bundle import BundleInputs, write_bundle

    results = build.results
    typed = lambda name, kind: results.get(name) if isinstance(results.get(name), kind) else None
    exports = {f.name: results[f.produced_by] for f in FORMATS if isinstance(results.get(f.produced_by), Result)}
    validations = {f.name: typed(f.validated_by, Validation) for f in FORMATS if typed(f.validated_by, Validation)}
    onnx = exports.get("fp32")
    inputs, _ = build.test_arrays(limit=64) if onnx is not None else (None, None)
    test = build.data.test
    return write_bundle(build.run.path, BundleInputs(
        recipe=recipe_dict(build.recipe), recipe_sha256=recipe_hash(build.recipe), recipe_source=build.recipe_source,
        overrides=list(build.overrides), run_id=build.run.run_id,
        bundle_path=str(build.run.path.with_name(build.run.run_id)), versions=library_versions(),
        device=device_fingerprint(build.device), dataset=build.data.info.to_dict(),
        records=[build.records[name] for name in STAGE_NAMES if name in build.records],
        model=build.chosen_exit_model() if onnx is not None else None, reference_inputs=inputs,
        plan=typed("plan", Plan), train=typed("train", TrainResult), scores=typed("score", ExitScores),
        selection=typed("select", Selection), prune=typed("prune", PruneResult), exports=exports,
        validations=validations, deliverable_latency=typed("bench", DeliverableLatency),
        heldout_images=test.images.numpy() if onnx is not None else None, heldout_labels=test.labels.numpy()))


TRAINING_FIELDS = ("seed", "device", "model", "data", "budget", "train")
SCORE_FIELDS = ("data", "bench.backend", "bench.warmup", "bench.repeats", "bench.batch_sizes", "bench.threads",
                "bench.table", "export.exporter", "export.opset", "export.simplify", "tensorrt",
                "select.latency_format", "quantize@int8-latency")
QUANTIZE_FIELDS = ("quantize", "bench.backend@auto-activations", "tensorrt.enabled@auto-activations",
                   "tensorrt.precision@auto-activations")

STAGES: list[Stage] = [
    # Version 2 plans where the slim heads' features go and counts them in the block's peak; 3 gives the
    # pass that computes them its own batch and refuses a block predicted over the budget: a resumed run
    # plans and trains again.
    Stage("plan", TRAINING_FIELDS, _plan, Plan, version=3),
    Stage("train", TRAINING_FIELDS, _train, TrainResult),
    # Version 2 keeps the paired validation counts select.confidence needs: a resumed run scores again.
    Stage("score", SCORE_FIELDS, _score, ExitScores, version=2),
    Stage("select", ("select",), _select, Selection),
    Stage("prune", ("prune",), _prune, PruneResult),
    # 2: average pools whose last window overhangs the map are written with explicit pads (an export by
    # version 1 lost up to 4 points in INT8 on ONNX Runtime): a resumed run re-exports.
    Stage("export", ("name", "export"), _export, OnnxExport, version=2),
    Stage("validate_fp32", ("validate",), _validate_fp32, Validation),
    Stage("ort_format", ("export.ort_format",), _ort_format, OrtExport),
    Stage("validate_ort", ("validate",), _validate_ort, Validation),
    Stage("quantize", QUANTIZE_FIELDS, _quantize, QuantResult),
    Stage("validate_int8", ("quantize", "validate"), _validate_int8, Validation),
    Stage("bench", ("bench",), _bench, DeliverableLatency),
    Stage("engine", ("tensorrt",), _engine, EngineResult),
    Stage("validate_engine", ("validate",), _validate_engine, Validation),
    Stage("bundle", (), _bundle, None, always=True),
]
STAGE_NAMES = [stage.name for stage in STAGES]


def run_pipeline(recipe: Recipe, run: RunFolder, *, resume: bool, until: str | None = None,
                 recipe_source: str = "", overrides: tuple[str, ...] = ()) -> Build:
    """Run (or continue) the stages of ``recipe`` in ``run`` up to and including ``until``."""
    if until is not None and until not in STAGE_NAMES:
        raise ValueError(f"unknown stage {until!r}")
    build = Build(recipe, run, resume, recipe_source, tuple(overrides))
    seed_everything(recipe.seed)
    threads, why = cpu_threads(recipe.threads)
    torch.set_num_threads(threads)
    log.info("torch threads: %d (%s)", threads, why)
    with run.locked():
        # A killed process leaves hidden temporary files (atomic writes, work folders, disk caches);
        # under the lock nothing else writes here, and none of them must end up in the bundle.
        stale = remove_scratch(run.path, keep=(LOCK_FILE,))
        if stale:
            log.info("removed %d temporary file(s) left by an interrupted build: %s", len(stale), ", ".join(stale[:5]))
        _check_world(run, resume)
        write_json(run.state / "recipe.json", {"recipe": recipe_dict(recipe), "source": recipe_source})
        with event_log(run.path / TENSORBOARD_DIR if recipe.log.tensorboard else None):
            build.execute(STAGES, until)
    # Several processes: release the others (they wait for this message), then part together.
    dist.broadcast_object(None)
    dist.barrier()
    return build


WORLD_FILE = "distributed.json"


def _check_world(run: RunFolder, resume: bool) -> None:
    """A distributed run records its world size; resuming it takes the same one, since a resumed
    block must read the same shards in the same order as the run that was interrupted."""
    path = run.state / WORLD_FILE
    recorded = read_json(path)["world_size"] if path.is_file() else 1
    # The plan is per process too (caches sized for one shard, DDP's buckets): it binds the world size.
    if resume and run.record_path("plan").is_file() and recorded != dist.world_size():
        how = (f"torchrun --nproc-per-node {recorded} -m nfcompile build ... --resume, or nfcompile build "
               f"--nproc {recorded} ... --resume") if recorded > 1 else "nfcompile build ... --resume (one process)"
        raise InputError(f"{run.path} was trained by {recorded} process(es) and this job has {dist.world_size()}: "
                         "a resumed run needs the same world size (its shards and batch order depend on it)",
                         hint=f"resume with {how}")
    if dist.world_size() > 1:
        write_json(path, {"world_size": dist.world_size(), "backend": dist.backend_name()})


def follow_pipeline(recipe: Recipe) -> None:
    """Ranks other than 0: train whenever rank 0 trains (same plan, same resume point), in a private
    scratch folder (activation caches, snapshots); then wait for rank 0 to finish, and return."""
    import shutil
    import tempfile
    from pathlib import Path

    scratch = Path(tempfile.mkdtemp(prefix=f"nfcompile-rank{dist.rank()}-"))
    try:
        build = Build(recipe, RunFolder(scratch), resume=False)
        seed_everything(recipe.seed)
        torch.set_num_threads(cpu_threads(recipe.threads)[0])
        while (job := dist.broadcast_object(None)) is not None:
            _train_rank(build, job, scratch / CHECKPOINT_DIR)
        dist.barrier()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def distributed_job(recipe: Recipe):
    """The recipe's process group for the duration, when torchrun launched this process; else nothing."""
    if not dist.launched():
        yield
        return
    from nfcompile.core.device import resolve_device
    from nfcompile.learning.parallel import configure

    section = recipe.distributed
    device = dist.local_device(resolve_device(recipe.device))
    if section.sync_batchnorm and device.type != "cuda":
        raise RecipeError("SyncBatchNorm needs CUDA devices (torch has no CPU implementation)",
                          field="distributed.sync_batchnorm")
    if dist.resolve_backend(section.backend, device) == "nccl" and device.type != "cuda":
        raise RecipeError("the nccl backend needs CUDA devices; use gloo (or auto) on CPU",
                          field="distributed.backend")
    configure(sync_batchnorm=section.sync_batchnorm)
    with dist.process_group(section.backend, device, section.timeout_minutes):
        yield
