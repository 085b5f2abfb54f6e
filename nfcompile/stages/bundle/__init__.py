"""Bundle stage: charts, report, reference outputs for `verify`, and the manifest, written last.

Every file is written atomically; the manifest, which hashes all the others, comes last, and the
pipeline then renames the run folder from `<run-id>.partial` to `<run-id>` in one step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfcompile.core.io import sha256_file, write_json, write_text
from nfcompile.core.log import get_logger
from nfcompile.core.results import (Artifact, DeliverableLatency, EngineResult, ExitScores, OnnxExport, Plan,
                                    PruneResult, Result, Selection, StageRecord, TrainResult, Validation)
from nfcompile.formats import FORMATS, get_format, onnx_runtime_formats
from nfcompile.runtime import OrtRunner, TorchRunner
from nfcompile.stages.bundle.manifest import MANIFEST_FILE, MANIFEST_FORMAT, hash_files, load_manifest, sealed
from nfcompile.stages.bundle.plots import class_accuracy, plot_confusion, plot_memory_plan, plot_training
from nfcompile.stages.bundle.report import render_report
from nfcompile.stages.bundle.verify import REFERENCE_DIR, VerifyReport, verify_bundle

__all__ = ["BundleInputs", "MANIFEST_FILE", "REFERENCE_DIR", "VerifyReport", "load_manifest", "record_engine",
           "verify_bundle", "write_bundle"]

log = get_logger(__name__)

# Held-out inputs kept in the bundle with the outputs each format gave at build time, so that
# `verify` can re-run the models and catch a deployment that no longer computes the same thing.
REFERENCE_SAMPLES = 32
# The whole test split, kept with its labels and PyTorch's outputs: `nfcompile engine` validates a
# rebuilt engine on it. Images stay uint8 as the dataset gives them (the manifest's preprocessing
# normalizes them), a quarter of the float32 size.
HELDOUT_IMAGES, HELDOUT_LABELS, HELDOUT_PYTORCH = "heldout_images", "heldout_labels", "heldout_pytorch"


@dataclass(frozen=True)
class BundleInputs:
    recipe: dict[str, Any]
    recipe_sha256: str
    recipe_source: str
    overrides: list[str]
    run_id: str
    bundle_path: str  # where the finished bundle will be (the run folder without .partial)
    versions: dict[str, Any]
    device: dict[str, Any]
    dataset: dict[str, Any]  # DatasetInfo.to_dict(): class names, preprocessing
    records: list[StageRecord]
    model: torch.nn.Module | None  # the chosen exit as exported (pruned when pruning ran)
    reference_inputs: np.ndarray | None  # preprocessed held-out inputs
    plan: Plan | None = None
    train: TrainResult | None = None
    scores: ExitScores | None = None
    selection: Selection | None = None
    prune: PruneResult | None = None
    exports: dict[str, Result] = field(default_factory=dict)  # by format name (nfcompile/formats.py)
    validations: dict[str, Validation] = field(default_factory=dict)  # by format name
    deliverable_latency: DeliverableLatency | None = None  # the chosen exit's formats timed side by side
    heldout_images: np.ndarray | None = None  # the test split, uint8 (N, 3, S, S), as the dataset gives it
    heldout_labels: np.ndarray | None = None

    @property
    def onnx(self) -> OnnxExport | None:
        return self.exports.get("fp32")


def write_bundle(root: Path, inputs: BundleInputs) -> Artifact:
    started = time.perf_counter()
    root = Path(root)
    images = {}
    if inputs.plan is not None:
        images["plan"] = plot_memory_plan(inputs.plan, inputs.train, root / "plan.png").name
    if inputs.train is not None and any(b.history for b in inputs.train.blocks):
        images["training"] = plot_training(inputs.train, root / "training.png").name
    if (root / "pareto.png").is_file():
        images["pareto"] = "pareto.png"
    references = _write_references(root, inputs)
    heldout = _write_heldout(root, inputs)
    per_class = None
    if heldout:
        labels, predicted = heldout.pop("_labels"), heldout.pop("_predicted")
        names = list(inputs.dataset.get("class_names") or [str(i) for i in range(int(labels.max()) + 1)])
        per_class = class_accuracy(labels, predicted, names)
        images["confusion"] = plot_confusion(labels, predicted, names, root / "confusion.png",
                                             title=f"{inputs.selection.chosen if inputs.selection else 'model'} "
                                                   f"on the test split (PyTorch)").name
        write_json(root / "per_class.json", per_class)
    # Everything but the report and the manifest is written by now: the two left take milliseconds.
    bundle_record = StageRecord("bundle", "ok", "seconds until the report was written", time.perf_counter() - started,
                                (MANIFEST_FILE, "report.md"), "", None)
    records = [*inputs.records, bundle_record]
    write_text(root / "report.md", render_report(
        recipe_name=inputs.recipe["name"], run_id=inputs.run_id, bundle_path=inputs.bundle_path,
        recipe_source=inputs.recipe_source, recipe_sha256=inputs.recipe_sha256, overrides=inputs.overrides,
        versions=inputs.versions, device=inputs.device, plan=inputs.plan, train=inputs.train, scores=inputs.scores,
        selection=inputs.selection, validations=inputs.validations, records=records, images=images,
        extra_sections=[*_finetune_section(inputs.train), *_prune_section(inputs.prune)],
        deliverables=inputs.deliverable_latency, per_class=per_class, ort=inputs.exports.get("ort"),
        int8=inputs.exports.get("int8")))
    manifest = _manifest(root, inputs, records, references)
    manifest["heldout"] = heldout or None
    manifest["latency"] = inputs.deliverable_latency.to_dict() if inputs.deliverable_latency else None
    manifest["metrics"]["per_class"] = per_class
    write_json(root / MANIFEST_FILE, sealed(manifest))
    log.info("bundle: %d files hashed into %s", len(manifest["files"]), MANIFEST_FILE)
    return Artifact(path=str(root), recipe_name=inputs.recipe["name"], run_id=inputs.run_id,
                    chosen_exit=inputs.selection.chosen if inputs.selection else None,
                    files=tuple(sorted(manifest["files"])), manifest_sha256=sha256_file(root / MANIFEST_FILE))


def _write_references(root: Path, inputs: BundleInputs) -> dict[str, Any]:
    """Reference inputs, PyTorch's outputs, and each ONNX format's outputs at build time."""
    if inputs.model is None or inputs.reference_inputs is None or inputs.onnx is None:
        return {}
    from nfcompile.core.io import atomic_path

    folder = root / REFERENCE_DIR
    folder.mkdir(exist_ok=True)
    x = np.ascontiguousarray(inputs.reference_inputs[:REFERENCE_SAMPLES], dtype=np.float32)
    outputs = {"inputs": x}
    with TorchRunner(inputs.model, input_name=inputs.onnx.input_name, output_name=inputs.onnx.output_name) as torch_run:
        outputs["pytorch"] = torch_run.infer({inputs.onnx.input_name: x})[inputs.onnx.output_name]
    models = {name: inputs.exports[name].path for name in onnx_runtime_formats() if name in inputs.exports}
    for name, path in models.items():
        with OrtRunner(root / path) as runner:
            outputs[name] = runner.infer({runner.input_names[0]: x})[runner.output_names[0]]
    files = {}
    for key, array in outputs.items():
        path = folder / f"{key}.npy"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
        files[key] = f"{REFERENCE_DIR}/{path.name}"
    return {"samples": int(len(x)), "files": files, "models": models}


def _write_heldout(root: Path, inputs: BundleInputs) -> dict[str, Any]:
    """The whole test split (uint8 images, labels) and PyTorch's outputs on it, for `nfcompile engine`;
    the labels and PyTorch's predictions come back too (keys `_labels`, `_predicted`) for the report."""
    if inputs.model is None or inputs.onnx is None or inputs.heldout_images is None or inputs.heldout_labels is None:
        return {}
    from nfcompile.data.preprocess import Preprocessing
    from nfcompile.runtime.compare import run_batched

    pre = inputs.dataset["preprocessing"]
    preprocessing = Preprocessing(image_size=pre["image_size"], mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                                  color=pre.get("color", "rgb"))
    images = np.ascontiguousarray(inputs.heldout_images, dtype=np.uint8)
    labels = np.ascontiguousarray(inputs.heldout_labels, dtype=np.int64)
    x = preprocessing.normalize(torch.from_numpy(images)).numpy()
    with TorchRunner(inputs.model, input_name=inputs.onnx.input_name, output_name=inputs.onnx.output_name) as runner:
        logits = run_batched(runner, x, 256)
    folder = root / REFERENCE_DIR
    folder.mkdir(exist_ok=True)
    files = {}
    for key, array in ((HELDOUT_IMAGES, images), (HELDOUT_LABELS, labels), (HELDOUT_PYTORCH, logits)):
        files[key] = _save_array(folder / f"{key}.npy", array).relative_to(root).as_posix()
    return {"samples": int(len(labels)), "split": "test", "files": files,
            "pytorch_accuracy": float(np.mean(logits.argmax(1) == labels)),
            "_labels": labels, "_predicted": logits.argmax(1)}


def _save_array(path: Path, array: np.ndarray) -> Path:
    from nfcompile.core.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    return path


def _prune_section(prune: PruneResult | None) -> list[str]:
    if prune is None:
        return []
    sizes = ""
    if prune.compressed_bytes and prune.dense_compressed_bytes:
        sizes = (f" Deflated (zip), the exported exit shrinks from {prune.dense_compressed_bytes:,} to "
                 f"{prune.compressed_bytes:,} bytes ({prune.dense_compressed_bytes / prune.compressed_bytes:.2f}x): "
                 "the zeros stay in the graph and compress.")
    lines = ["## Pruning", "", f"{prune.method} on the {prune.target.replace('_', ' ')}; test accuracy before "
             f"{prune.accuracy_before * 100:.2f}%.{sizes} Every method starts from the same weights.", "",
             "| method | sparsity reached | test accuracy | seconds | forward+backward samples |",
             "|---|---|---|---|---|"]
    lines += [f"| {o.method} | {o.sparsity_reached * 100:.1f}% | {o.accuracy * 100:.2f}% | {o.seconds:.1f} | "
              f"{o.samples_processed:,} |" for o in (prune.outcome, *prune.baselines)]
    return lines + [""]


def _finetune_section(train: TrainResult | None) -> list[str]:
    """Gradient filtering's own figures: which layers, and the activation memory each one saved."""
    if train is None or train.method != "gradient_filter":
        return []
    details = train.details
    lines = ["## Gradient filtering", "",
             f"Fine-tuned {', '.join(details['layers'])} with R={details['patch']} (and {details['classifier']} "
             f"with exact gradients); everything else frozen, BatchNorm in eval mode. Test accuracy "
             f"{details['test_accuracy'] * 100:.2f}%, median step {details['step_seconds'] * 1e3:.1f} ms.", "",
             "| layer | kernel | stride | groups | saved for backward (plain) | (filtered) | reduction | (R*stride)^2 |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {m['name']} | {tuple(m['kernel'])} | {tuple(m['stride'])} | {m['groups']} | {m['standard_bytes']:,} | "
              f"{m['filtered_bytes']:,} | {m['reduction']:.2f}x | {m['expected_reduction']:.0f}x |"
              for m in details["layer_memory"]]
    return lines + [""]


def _manifest(root: Path, inputs: BundleInputs, records: list[StageRecord], references: dict[str, Any]) -> dict:
    selection, scores, onnx = inputs.selection, inputs.scores, inputs.onnx
    chosen = next((e for e in scores.exits if e.name == selection.chosen), None) if scores and selection else None
    io_spec = None
    if onnx is not None:
        io_spec = {"input": {"name": onnx.input_name, "shape": list(onnx.input_shape), "dtype": "float32",
                             "layout": "NCHW"},
                   "output": {"name": onnx.output_name, "shape": list(onnx.output_shape), "dtype": "float32",
                              "meaning": "logits over the labels, in label order"}}
    return {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_id": inputs.run_id,
        "recipe": inputs.recipe,
        "recipe_sha256": inputs.recipe_sha256,
        "recipe_source": inputs.recipe_source,
        "overrides": inputs.overrides,
        "versions": inputs.versions,
        "device": inputs.device,
        "dataset": {k: v for k, v in inputs.dataset.items() if k not in ("preprocessing", "class_names")},
        "preprocessing": inputs.dataset.get("preprocessing"),
        "labels": inputs.dataset.get("class_names"),
        "model": {"arch": inputs.recipe["model"]["arch"], "exit": selection.chosen if selection else None,
                  "unit": selection.unit if selection else None, "io": io_spec,
                  **{f.manifest_key: inputs.exports[f.name].to_dict() if f.name in inputs.exports else None
                     for f in FORMATS},
                  "pruned": inputs.prune.outcome.to_dict() if inputs.prune else None},
        "metrics": {"exit": chosen.to_dict() if chosen else None,
                    "full_model": scores.full_model.to_dict() if scores else None,
                    "vs_full": selection.vs_full if selection else None},
        "validation": {name: v.to_dict() for name, v in inputs.validations.items()},
        "reference": references,
        "stages": [r.to_dict() | {"result": None} for r in records],
        # A torchrun job: world size, backend, every rank's peaks (absent for one process).
        **({"distributed": inputs.train.details["distributed"]}
           if inputs.train is not None and "distributed" in inputs.train.details else {}),
        "files": hash_files(root),
    }


def record_engine(root: Path, engine: EngineResult, validation: Validation, seconds: float) -> dict[str, Any]:
    """Add an engine built on the target device to a finished bundle: its file joins the manifest's
    hashes, its build fingerprint and validation the manifest's records. The manifest is rewritten
    atomically, so the bundle stays verifiable."""
    root = Path(root)
    manifest = load_manifest(root)
    entry = get_format("engine")
    manifest["model"][entry.manifest_key] = engine.to_dict()
    manifest["validation"][entry.name] = validation.to_dict()
    manifest["stages"].append(StageRecord("engine (rebuilt on device)", "ok", f"TensorRT {engine.tensorrt_version} "
                                          f"on {engine.gpu}", seconds, (engine.path,), "", None).to_dict())
    manifest["files"] = hash_files(root)
    manifest = sealed(manifest)
    write_json(root / MANIFEST_FILE, manifest)
    return manifest
