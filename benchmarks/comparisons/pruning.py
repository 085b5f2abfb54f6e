"""7. DRIVE pruning vs magnitude (IMP with rewinding), SNIP and SynFlow at the same sparsity.

On the quickstart model (`SuiteConfig.methods_setup`) at the recipe's default `prune:` settings (90%
sparsity). Every method starts from the same freshly initialized weights, as the pruning-at-init
baselines are defined, and trains on the same batches under the same schedule; the methods run
one after another in a rotating order, so a change in the machine's load falls on each alike. A
dense model trained on the same batches for the same epochs is the reference. Each pruned model is
exported to ONNX (zeros stay in the graph) and its deflated size measured.

The methods end a few test images apart, so one fixed split would measure those images more than
the methods: each repeat draws its own train/val/test split from its seed (as well as the
initialization and the batch order), and there are `SuiteConfig.pruning_repeats` of them.
"""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfcompile.recipe.schema import ExportSection
from nfcompile.runtime.onnx_io import export_onnx
from nfcompile.stages.prune.prune import METHODS, compressed_size, prune_with
from nfcompile.data.sources import unaugmented
from nfcompile.learning import top1_accuracy
from nfcompile.stages.prune.training import train_masked

from benchmarks.markdown import count, kib, spread, table
from benchmarks.measures import paired_ratios, spread_dict
from benchmarks.registry import Comparison, register_comparison
from benchmarks.workbench import Workbench

DRIVE = "drive"
REFERENCE = "dense"  # no pruning, same epochs and batches


def run(bench: Workbench) -> dict[str, Any]:
    config = bench.config
    setup = config.methods_setup
    base = bench.recipe(setup)  # what every repeat shares: the prune settings and the input size
    size = base.data.image_size
    methods = list(METHODS)  # drive first, then the baselines
    repeats = []
    for repeat in range(config.pruning_repeats):
        seed = config.seed + repeat
        recipe = bench.recipe(setup, overrides=(f"seed={seed}",))  # the data split follows the recipe's seed
        data = bench.data(recipe)
        start = bench.fresh_full_model(recipe, seed)
        folder = bench.scratch / f"pruning-{repeat}"
        folder.mkdir(parents=True, exist_ok=True)
        outcomes: dict[str, dict[str, Any]] = {}
        shift = repeat % len(methods)
        order = methods[shift:] + methods[:shift]
        for method in order:
            model = copy.deepcopy(start)
            outcome = prune_with(method, model, data, recipe.prune, recipe.train, device=bench.device, seed=seed)
            outcomes[method] = {**outcome.to_dict(), "deflated_onnx_bytes": _deflated_onnx_bytes(
                model, folder / f"{method}.onnx", size, recipe.export)}
        dense = copy.deepcopy(start)
        outcomes[REFERENCE] = _dense_reference(dense, data, recipe, bench.device, seed, epochs=outcomes[DRIVE]["epochs"])
        outcomes[REFERENCE]["deflated_onnx_bytes"] = _deflated_onnx_bytes(dense, folder / "dense.onnx", size,
                                                                          recipe.export)
        repeats.append({"seed": seed, "order": order, "test_images": len(data.test),
                        "test_split": _fingerprint(data.test.images), "outcomes": outcomes})
    return {"setup": setup.name, "sparsity": base.prune.sparsity, "dense_epochs": base.prune.dense_epochs,
            "rounds": base.prune.rounds, "finetune_epochs": base.prune.finetune_epochs,
            "test_images": repeats[0]["test_images"], "split_per_repeat": True, "methods": [*methods, REFERENCE],
            "repeats": repeats, "summary": _summary(repeats, methods)}


def _fingerprint(images: torch.Tensor) -> str:
    """Names a test split in the results, so that repeats on different splits can be told apart."""
    return hashlib.sha256(images.cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _dense_reference(model: nn.Module, data, recipe, device: torch.device, seed: int, *, epochs: int) -> dict[str, Any]:
    started, cpu_started = time.perf_counter(), time.process_time()
    train_masked(model, None, data, recipe.train, device=device, seed=seed, epochs=range(epochs), total_epochs=epochs)
    return {"method": REFERENCE, "accuracy": top1_accuracy(model, unaugmented(data.test, data.preprocessing, device)),
            "sparsity_reached": 0.0, "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started, "epochs": epochs}


def _deflated_onnx_bytes(model: nn.Module, path: Path, size: int, export: ExportSection) -> int:
    exported = export_onnx(model, path, input_shape=(3, size, size), exporter=export.exporter, opset=export.opset,
                           dynamic_batch=export.dynamic_batch)
    return compressed_size(exported.path)


def _summary(repeats: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    column = lambda method, key: [r["outcomes"][method][key] for r in repeats]
    summary: dict[str, Any] = {
        method: {key: spread_dict(column(method, key))
                 for key in ("accuracy", "sparsity_reached", "seconds", "cpu_seconds", "deflated_onnx_bytes")}
        for method in [*methods, REFERENCE]}
    baselines = [m for m in methods if m != DRIVE]
    # DRIVE minus each baseline, in points, paired within a repeat: positive where DRIVE is better.
    summary["drive_minus"] = {m: spread_dict([100 * (a - b) for a, b in zip(column(DRIVE, "accuracy"),
                                                                           column(m, "accuracy"))])
                              for m in baselines}
    summary["time_vs_drive"] = {m: {"wall": paired_ratios(column(m, "seconds"), column(DRIVE, "seconds")),
                                    "cpu": paired_ratios(column(m, "cpu_seconds"), column(DRIVE, "cpu_seconds"))}
                                for m in baselines}
    summary["drive_at_least"] = {m: sum(a >= b for a, b in zip(column(DRIVE, "accuracy"), column(m, "accuracy")))
                                 for m in baselines}
    return summary


def render(result: dict[str, Any]) -> str:
    s, repeats = result["summary"], result["repeats"]
    dense = s[REFERENCE]
    rows = []
    for method in result["methods"]:
        m = s[method]
        rows.append([method, spread(m["sparsity_reached"], 1, "%", scale=100), spread(m["accuracy"], 2, "%", scale=100),
                     None if method in (DRIVE, REFERENCE) else
                     f"{spread(s['drive_minus'][method], 2, ' pt')} ({s['drive_at_least'][method]}/{len(repeats)})",
                     spread(m["seconds"], 1, " s"),
                     None if method in (DRIVE, REFERENCE) else spread(s["time_vs_drive"][method]["wall"], 2, "x"),
                     None if method in (DRIVE, REFERENCE) else spread(s["time_vs_drive"][method]["cpu"], 2, "x"),
                     f"{kib(m['deflated_onnx_bytes']['mean'])} "
                     f"({dense['deflated_onnx_bytes']['mean'] / m['deflated_onnx_bytes']['mean']:.2f}x smaller)"])
    first = repeats[0]["outcomes"][DRIVE]
    return (f"**{result['setup']}** at {result['sparsity']:.0%} sparsity of the {count(first['prunable_weights'])} "
            f"conv and linear weights: DRIVE {result['dense_epochs']} dense epochs, {result['rounds']} rounds, "
            f"{result['finetune_epochs']} fine-tuning epochs between rounds; every method's final model trains "
            f"{first['epochs']} epochs (magnitude pruning retrains every round). Test accuracy over "
            f"{result['test_images']} images (one image is {100 / result['test_images']:.2f} points); repeats use "
            "seeds " + ", ".join(str(r["seed"]) for r in repeats)
            + (", each seed drawing its own train/val/test split" if result.get("split_per_repeat") else "")
            + ".\n\n"
            + table(["method", "sparsity reached", "test accuracy", "DRIVE minus this (repeats DRIVE ≥)",
                     "wall time", "wall time / DRIVE's", "CPU time / DRIVE's", "deflated ONNX (vs dense)"], rows)
            + "\nPer repeat, test accuracy: "
            + "; ".join(f"seed {r['seed']}: " + ", ".join(f"{m} {r['outcomes'][m]['accuracy']:.2%}"
                                                          for m in result["methods"]) for r in repeats) + ".\n")


register_comparison(Comparison(
    name="pruning", title="DRIVE pruning vs magnitude, SNIP and SynFlow at the same sparsity",
    question="At the same sparsity, is DRIVE at least as accurate as SNIP and SynFlow, and how much cheaper is it "
             "than iterative magnitude pruning with rewinding?",
    run=run, render=render))
