"""The Python API: one function per command, typed results in, typed results out. The CLI stands on it.

    import nfcompile
    built = nfcompile.build("recipes/quickstart.yaml", ["train.epochs=2"])
    print(built.path, built.chosen_exit, built.scores.get(built.chosen_exit).accuracy)
    nfcompile.verify(built.path)

A recipe is a path or a `Recipe` object; overrides are `section.field=value` strings, as `--set`
takes them. Nothing here prints: logs go to the `nfcompile` logger, results are returned, failed
gates raise `GateFailed` and bad input raises `RecipeError`/`InputError` (all `NfcompileError`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from nfcompile.core.io import inside
from nfcompile.core.log import get_logger
from nfcompile.core.results import (ExitScores, Latency, MachineLoad, Plan, Result, Selection, StageRecord,
                                    TrainResult, Validation)
from nfcompile.errors import GateFailed, InputError, NfcompileError, RecipeError, RunBusy
from nfcompile.recipe import Recipe, load_recipe, with_overrides

log = get_logger(__name__)

RecipeLike = Union[str, Path, Recipe]
DEFAULT_OUT = Path("artifacts")


# --------------------------------------------------------------------------- recipes


def load_checked_recipe(recipe: RecipeLike, overrides: Iterable[str] = ()) -> tuple[Recipe, str]:
    """The recipe, validated, and where it came from. Schema first, then what the schema cannot know:
    the architecture at this input size, the dataset's presence, the bench backend, the weights file.
    A user error found now costs seconds; found after training it costs the run."""
    from nfcompile.data import check_data
    from nfcompile.feasibility import check_batchnorm_maps, check_feasible
    from nfcompile.models import build_unit_net, unit_shapes_for
    from nfcompile.runtime.backends import get_backend, list_backends

    if isinstance(recipe, Recipe):
        source = "(in memory)"
        loaded = with_overrides(recipe, overrides, source=source)
    else:
        source = str(recipe)
        loaded = load_recipe(Path(recipe), overrides)
    # A weights file is read now, weights_only (a crafted pickle is refused here, never run, and one
    # that does not fit the architecture fails in seconds); torchvision weights would need a download.
    pretrained = loaded.model.pretrained
    model = loaded.model if pretrained and not pretrained.startswith("torchvision:") else \
        loaded.model.model_copy(update={"pretrained": None})
    try:
        if loaded.bench.backend not in list_backends():
            raise RecipeError(f"unknown backend {loaded.bench.backend!r}; choose one of {', '.join(list_backends())}",
                              field="bench.backend")
        if get_backend(loaded.bench.backend).needs_engine and not loaded.tensorrt.enabled:
            raise RecipeError(f"{loaded.bench.backend} times a TensorRT engine: set tensorrt.enabled: true",
                              field="bench.backend")
        net = build_unit_net(model, loaded.model.num_classes or 10)
        unit_shapes_for(net, loaded.data.image_size)
        check_batchnorm_maps(net, loaded.data.image_size)
        check_data(loaded.data)
        check_feasible(loaded)  # device, exporter opset, classes: what the schema cannot judge alone
    except RecipeError as exc:
        raise exc.in_file(source) from None
    return loaded, source


def check(recipe: RecipeLike, overrides: Iterable[str] = ()) -> Recipe:
    """Validate a recipe and return it resolved (every default filled in)."""
    return load_checked_recipe(recipe, overrides)[0]


def available() -> dict[str, list[str]]:
    """What recipes may name: architectures, datasets, bench backends, deliverable formats."""
    from nfcompile.data import list_datasets
    from nfcompile.formats import FORMATS
    from nfcompile.models import list_adapters
    from nfcompile.runtime.backends import list_backends

    return {"archs": list_adapters(), "datasets": list_datasets(), "backends": list_backends(),
            "formats": [f.name for f in FORMATS]}


def plan(recipe: RecipeLike, overrides: Iterable[str] = ()) -> Plan:
    """Profile every unit and partition the network under the budget, without training; writes nothing."""
    from nfcompile.core.device import resolve_device
    from nfcompile.core.repro import seed_everything
    from nfcompile.data import load_data
    from nfcompile.models import build_unit_net
    from nfcompile.stages.plan import plan_training
    from nfcompile.stages.plan.profile_cache import ProfileCache

    loaded, _ = load_checked_recipe(recipe, overrides)
    data = load_data(loaded.data, loaded.seed)
    seed_everything(loaded.seed)
    classes = loaded.model.num_classes or data.info.num_classes
    return plan_training(build_unit_net(loaded.model, classes), classes, image_size=loaded.data.image_size,
                         train_samples=len(data.train), val_samples=len(data.monitor), budget=loaded.budget,
                         train=loaded.train, augment=loaded.data.augment, device=resolve_device(loaded.device),
                         cache=ProfileCache.for_recipe(loaded.train.neuroflux.reuse_profiles))


# --------------------------------------------------------------------------- build / train / select / export


@dataclass(frozen=True)
class BuildResult:
    """What a pipeline run left: the bundle (or, for `train`, the unfinished run folder), every stage's
    record, and every stage's typed result by stage name."""

    path: Path
    recipe: Recipe
    stages: tuple[StageRecord, ...]
    results: dict[str, Any] = field(default_factory=dict)

    def _typed(self, stage: str, kind: type) -> Any:
        value = self.results.get(stage)
        return value if isinstance(value, kind) else None

    @property
    def plan(self) -> Plan | None:
        return self._typed("plan", Plan)

    @property
    def train(self) -> TrainResult | None:
        return self._typed("train", TrainResult)

    @property
    def scores(self) -> ExitScores | None:
        return self._typed("score", ExitScores)

    @property
    def selection(self) -> Selection | None:
        return self._typed("select", Selection)

    @property
    def chosen_exit(self) -> str | None:
        return self.selection.chosen if self.selection else None

    @property
    def validations(self) -> dict[str, Validation]:
        """Every format's validation against PyTorch, by format name (fp32, int8, engine)."""
        from nfcompile.formats import FORMATS

        return {f.name: self.results[f.validated_by] for f in FORMATS
                if isinstance(self.results.get(f.validated_by), Validation)}


def _run(recipe: RecipeLike, overrides: Sequence[str], *, out_dir: Path, resume: bool, run_dir: Path | None,
         until: str | None, need_stage: str | None = None):
    from nfcompile.core import distributed as dist
    from nfcompile.pipeline import distributed_job, follow_pipeline, run_pipeline
    from nfcompile.runs import keep_or_discard, open_run

    loaded, source = load_checked_recipe(recipe, overrides)
    with distributed_job(loaded):
        if not dist.is_main():  # a torchrun job's other ranks: they train, rank 0 builds the run
            follow_pipeline(loaded)
            return loaded, None, None
        run, continuing = open_run(loaded.name, Path(out_dir), resume=resume, run_dir=run_dir, need_stage=need_stage)
        try:
            build_ = run_pipeline(loaded, run, resume=continuing, until=until, recipe_source=source,
                                  overrides=tuple(overrides))
        except RunBusy:
            raise  # another process's run: neither kept nor discarded by this one
        except BaseException as exc:
            keep_or_discard(run, exc)
            raise
    return loaded, run, build_


def _result(path: Path, recipe: Recipe, build_) -> BuildResult:
    return BuildResult(path, recipe, tuple(build_.records.values()), dict(build_.results))


def build(recipe: RecipeLike, overrides: Sequence[str] = (), *, out_dir: str | Path = DEFAULT_OUT,
          resume: bool = False, run_dir: str | Path | None = None) -> BuildResult | None:
    """The whole pipeline, recipe to bundle. ``resume`` continues the latest unfinished run of the
    recipe (or ``run_dir``), reusing every stage whose recipe fields are unchanged. Under torchrun,
    ranks other than 0 train and get None: rank 0 writes the bundle."""
    loaded, run, build_ = _run(recipe, overrides, out_dir=Path(out_dir), resume=resume,
                               run_dir=Path(run_dir) if run_dir else None, until=None)
    return _result(run.finish().path, loaded, build_) if run is not None else None


def train(recipe: RecipeLike, overrides: Sequence[str] = (), *, out_dir: str | Path = DEFAULT_OUT,
          resume: bool = False, run_dir: str | Path | None = None) -> BuildResult | None:
    """Plan and train, checkpointing every block; the run stays unfinished for `export` or `select`.
    Under torchrun, ranks other than 0 get None."""
    loaded, run, build_ = _run(recipe, overrides, out_dir=Path(out_dir), resume=resume,
                               run_dir=Path(run_dir) if run_dir else None, until="train")
    return _result(run.path, loaded, build_) if run is not None else None


def export(recipe: RecipeLike, overrides: Sequence[str] = (), *, out_dir: str | Path = DEFAULT_OUT,
           run_dir: str | Path | None = None) -> BuildResult:
    """Finish a trained run (from `train`): every stage after training, then the bundle."""
    loaded, run, build_ = _run(recipe, overrides, out_dir=Path(out_dir), resume=True,
                               run_dir=Path(run_dir) if run_dir else None, until=None, need_stage="train")
    if build_.records["train"].status != "reused":
        log.info("training ran in this call: the run had no finished training for this recipe")
    return _result(run.finish().path, loaded, build_)


@dataclass(frozen=True)
class SelectResult:
    path: Path  # the run or bundle whose exits were judged
    scores: ExitScores
    selection: Selection


def select(recipe: RecipeLike, overrides: Sequence[str] = (), *, out_dir: str | Path = DEFAULT_OUT,
           run_dir: str | Path | None = None) -> SelectResult:
    """Selection again over scored exits, with this recipe's select section; training is never rerun.

    On an unfinished run the score and select stages run (or are reused) there. On a finished bundle
    nothing is written: the stored scores are re-judged.
    """
    from nfcompile.runs import RunFolder
    from nfcompile.stages.select import select_exit

    loaded, _ = load_checked_recipe(recipe, overrides)
    out_dir = Path(out_dir)
    run = RunFolder(Path(run_dir)) if run_dir else (RunFolder.find(out_dir, loaded.name, unfinished_only=True)
                                                    or RunFolder.find(out_dir, loaded.name, unfinished_only=False))
    if run is None or not run.record_path("train").is_file():
        raise InputError(f"no trained run of {loaded.name!r} in {out_dir}", hint="run `nfcompile train` first")
    if run.finished:
        scores = run.read_record("score").result_as(ExitScores)
        return SelectResult(run.path, scores, select_exit(scores, loaded.select))
    _, run, build_ = _run(recipe, overrides, out_dir=out_dir, resume=True, run_dir=run.path, until="select")
    return SelectResult(run.path, build_.results["score"], build_.results["select"])


# --------------------------------------------------------------------------- bundle commands


def verify(bundle: str | Path, *, parity: bool = True):
    """Every file's sha256 against the manifest, then (``parity``) the ONNX models against the outputs
    recorded at build time. Returns the `VerifyReport`; raises `GateFailed` when the bundle fails."""
    from nfcompile.stages.bundle import verify_bundle

    report = verify_bundle(Path(bundle), parity=parity)
    if not report.ok:
        problems = [f"{len(names)} {label}" for label, names in
                    (("changed", report.changed), ("missing", report.missing), ("extra", report.extra)) if names]
        problems += [f"parity failed for {p.model} vs {p.against}" for p in report.parity if not p.passed]
        raise GateFailed(f"{bundle}: verification failed: {', '.join(problems)} "
                         f"(first: {(report.changed + report.missing + report.extra + ('',))[0] or 'parity'})",
                         result=report)
    return report


@dataclass(frozen=True)
class BenchResult(Result):
    bundle: str
    model: str  # the file timed, relative to the bundle
    format: str
    runner: str
    latency: tuple[Latency, ...]
    max_latency_ms: float | None
    table: str | None  # the latency table written (--emit-table), if any
    table_exits: int = 0
    load: MachineLoad | None = None  # the machine's load while timing

    @property
    def passed(self) -> bool:
        smallest = min(self.latency, key=lambda lat: lat.batch_size)
        return self.max_latency_ms is None or smallest.p50_ms <= self.max_latency_ms


def bench(bundle: str | Path, *, backend: str | None = None, model: str = "fp32", batch_sizes: Sequence[int] = (),
          warmup: int | None = None, repeats: int | None = None, max_latency_ms: float | None = None,
          emit_table: str | Path | None = None) -> BenchResult:
    """Time a bundle's model on this machine (the recipe's bench settings unless given). With
    ``max_latency_ms``, raises `GateFailed` when the p50 at the smallest batch is slower."""
    from nfcompile.core.io import require_regular_target
    from nfcompile.recipe.schema import BenchSection, TensorRTSection
    from nfcompile.runtime.latency import machine_load
    from nfcompile.stages.bundle import load_manifest
    from nfcompile.stages.score.timing import time_onnx
    from nfcompile.stages.validate.gates import require_gate_limit

    bundle = Path(bundle)
    if max_latency_ms is not None:
        require_gate_limit("--max-latency-ms", max_latency_ms)
    if emit_table is not None:
        require_regular_target(Path(emit_table))  # before timing anything, not when the table is written
    manifest = load_manifest(bundle)
    recipe = manifest["recipe"]
    section = BenchSection.model_validate({**{k: v for k, v in recipe["bench"].items() if k != "table"},
                                           **({"backend": backend} if backend else {}),
                                           **({"batch_sizes": tuple(batch_sizes)} if batch_sizes else {}),
                                           **({"warmup": warmup} if warmup is not None else {}),
                                           **({"repeats": repeats} if repeats is not None else {})})
    tensorrt = TensorRTSection.model_validate({**recipe["tensorrt"], "timing_cache": None})
    entry = _bundle_model(bundle, manifest, model)
    engine_dir = _scratch_dir(bundle)
    table = None
    load = machine_load()
    if load.loaded:
        log.warning("timing on a loaded machine (%s): latencies carry that noise", load.describe())
    try:
        timing = time_onnx(inside(bundle, entry["path"]), tuple(manifest["model"]["io"]["input"]["shape"][1:]),
                           section, tensorrt=tensorrt, engine_dir=engine_dir)
        if emit_table is not None:
            from nfcompile.stages.score import EXITS_DIR, emit_latency_table

            table = emit_latency_table(bundle / EXITS_DIR, Path(emit_table), section, tensorrt=tensorrt,
                                       engine_dir=engine_dir)
    finally:
        shutil.rmtree(engine_dir, ignore_errors=True)
    result = BenchResult(str(bundle), entry["path"], model, timing.runner, timing.latency, max_latency_ms,
                         str(emit_table) if table is not None else None, len(table.exits) if table is not None else 0,
                         load)
    if not result.passed:
        smallest = min(result.latency, key=lambda lat: lat.batch_size)
        raise GateFailed(f"{entry['path']}: p50 latency {smallest.p50_ms:.3f} ms at batch {smallest.batch_size} "
                         f"exceeds --max-latency-ms {max_latency_ms:g} on {timing.runner}", result=result)
    return result


def _bundle_model(bundle: Path, manifest: dict, name: str) -> dict:
    """The manifest entry of one ONNX Runtime format of the bundle."""
    from nfcompile.formats import get_format, onnx_runtime_formats
    from nfcompile.stages.bundle.manifest import checked_model_file

    if name not in onnx_runtime_formats():
        raise InputError(f"--model {name!r}: choose one of {', '.join(onnx_runtime_formats())}")
    entry = manifest["model"].get(get_format(name).manifest_key)
    if entry is None:
        raise InputError(f"{bundle}: has no {name} model")
    checked_model_file(bundle, entry["path"])  # a truncated or replaced file is named before it is run
    return entry


def _scratch_dir(bundle: Path) -> Path:
    """Engines built for timing go beside the bundle, never into it (its files are hashed)."""
    return Path(tempfile.mkdtemp(prefix=".bench-", dir=Path(bundle).parent))


@dataclass(frozen=True)
class Prediction(Result):
    image: str
    top: tuple[dict[str, Any], ...]  # {"label", "index", "probability"}, most probable first


@dataclass(frozen=True)
class Predictions(Result):
    bundle: str
    model: str  # the file that ran, relative to the bundle
    format: str
    predictions: tuple[Prediction, ...]


def predict(bundle: str | Path, images: Sequence[str | Path], *, top_k: int = 3,
            model: str = "fp32") -> Predictions:
    """Classify image files with ONNX Runtime and the bundle's own preprocessing."""
    import numpy as np

    from nfcompile.data import Preprocessing, decode_image
    from nfcompile.runtime import OrtRunner
    from nfcompile.stages.bundle import load_manifest

    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    pre = manifest["preprocessing"]
    preprocessing = Preprocessing(image_size=pre["image_size"], mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                                  color=pre.get("color", "rgb"))
    labels = manifest["labels"]
    entry = _bundle_model(bundle, manifest, model)
    batch = np.stack([preprocessing.normalize(decode_image(p, preprocessing.image_size, preprocessing.color)[None]).numpy()[0]
                      for p in images])
    with OrtRunner(inside(bundle, entry["path"])) as runner:
        logits = runner.infer({runner.input_names[0]: batch})[runner.output_names[0]]
    if logits.shape[1] != len(labels):
        raise InputError(f"{bundle}: the model gives {logits.shape[1]} scores but the manifest has {len(labels)} "
                         "labels", hint=f"check the bundle with `nfcompile verify {bundle}`")
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    k = min(top_k, len(labels))
    return Predictions(str(bundle), entry["path"], model, tuple(
        Prediction(str(path), tuple({"label": labels[i], "index": int(i), "probability": float(row[i])}
                                    for i in np.argsort(-row)[:k]))
        for path, row in zip(images, probabilities)))


@dataclass(frozen=True)
class EngineRun(Result):
    bundle: str
    engine: Any  # EngineResult
    validation: Validation


def engine(bundle: str | Path, *, precision: str | None = None) -> EngineRun:
    """Verify the bundle (hashes and parity; a tampered bundle is refused), build the TensorRT engine on
    this device from its ONNX, validate it on the whole held-out test split kept in the bundle with
    its labels against the outputs PyTorch gave at build time (the validate stage's own check), and
    record it in the manifest."""
    import time


    from nfcompile.errors import StageSkipped
    from nfcompile.formats import get_format
    from nfcompile.recipe.schema import TensorRTSection, ValidateSection
    from nfcompile.stages.bundle import load_manifest, record_engine
    from nfcompile.stages.bundle.manifest import checked_model_file
    from nfcompile.stages.engine import build_engine
    from nfcompile.stages.validate import engine_checks, require_passed, validate_engine

    bundle = Path(bundle)
    verify(bundle)  # GateFailed names what changed: never build an engine from a tampered bundle
    manifest = load_manifest(bundle)
    recipe = manifest["recipe"]
    section = TensorRTSection.model_validate({**recipe["tensorrt"], "timing_cache": None, "enabled": True,
                                              **({"precision": precision} if precision else {})})
    onnx = manifest["model"].get(get_format("fp32").manifest_key)
    int8 = manifest["model"].get(get_format("int8").manifest_key)
    if onnx is None:
        raise InputError(f"{bundle}: has no ONNX model to build an engine from")
    started = time.perf_counter()
    try:
        result = build_engine(checked_model_file(bundle, onnx["path"]),
                              checked_model_file(bundle, int8["path"]) if int8 else None, section, out_dir=bundle)
    except StageSkipped as skip:
        raise NfcompileError(f"cannot build a TensorRT engine on this machine: {skip.reason}",
                             hint="run `nfcompile engine` on the target device, with nfcompile[tensorrt] installed")
    inputs, labels, expected = _heldout(bundle, manifest)
    validate = ValidateSection.model_validate(recipe["validate"])
    comparison = validate_engine(expected, bundle / result.path, validate, inputs=inputs, labels=labels)
    validation = Validation("engine", comparison, tuple(engine_checks(comparison, validate)))
    require_passed(validation.checks, "TensorRT engine vs PyTorch")
    record_engine(bundle, result, validation, time.perf_counter() - started)
    return EngineRun(str(bundle), result, validation)


def _heldout(bundle: Path, manifest: dict):
    """The bundle's whole held-out split, preprocessed as the manifest says, its labels, and PyTorch's
    outputs on it at build time (bundles from before the held-out set: the 32 reference inputs, unlabelled)."""
    import torch

    from nfcompile.data import Preprocessing
    from nfcompile.stages.bundle.manifest import load_array

    heldout = manifest.get("heldout")
    if not heldout:
        reference = manifest["reference"]["files"]
        load = lambda key: load_array(bundle, reference[key])
        log.warning("%s keeps no held-out set with labels (built before it did): validating on the %d reference "
                    "inputs only", bundle, len(load("inputs")))
        return load("inputs"), None, load("pytorch")
    files = heldout["files"]
    load = lambda key: load_array(bundle, files[key])
    pre = manifest["preprocessing"]
    preprocessing = Preprocessing(image_size=pre["image_size"], mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                                  color=pre.get("color", "rgb"))
    images = torch.from_numpy(load("heldout_images"))
    return preprocessing.normalize(images).numpy(), load("heldout_labels"), load("heldout_pytorch")
