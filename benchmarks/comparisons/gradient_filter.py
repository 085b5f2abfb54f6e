"""6. Gradient filtering vs plain backprop on the same layers (Yang et al., CVPR 2023).

On the quickstart model (`SuiteConfig.methods_setup`): the whole model is pretrained briefly with
plain backprop at the recipe's batch size, then fine-tuned twice from those weights, in the same
data order: its last conv layers and the classifier with filtered gradients (`train.method:
gradient_filter`), and the same layers with exact gradients. Everything else is frozen, BatchNorm
in eval mode. The pretraining is short on purpose: a model already at its best leaves fine-tuning
nothing to show. Activation memory is measured per layer (bytes autograd saves for backward); the
step time is timed with the two alternating, step by step, on one batch.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nfcompile.core.results import Result
from nfcompile.data import DataBundle, image_batches
from nfcompile.data.sources import unaugmented
from nfcompile.learning import top1_accuracy
from nfcompile.recipe.schema import TrainSection
from nfcompile.stages.prune.training import train_masked
from nfcompile.stages.train.gradient_filter import (FineTuneSummary, filtered_convs, only_trainable, sync,
                                                    train_gradient_filter)

from benchmarks.markdown import count, kib, spread, table
from benchmarks.measures import spread_dict
from benchmarks.registry import Comparison, register_comparison
from benchmarks.workbench import Workbench

PRETRAIN_EPOCHS = 2
FINE_TUNE = ("train.epochs=3",)  # the layers and patch size are the recipe's defaults


def interleaved_step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str],
                             classifier: str, patch: int, *, repeats: int = 20) -> tuple[float, float]:
    """Median seconds of one forward+backward pass on ``(x, y)``: (gradient-filtered, plain backprop).

    The two alternate step by step, so a busy machine slows both alike; step times taken in two
    separate training runs minutes apart are not comparable on a shared CPU. Runs on a copy.
    """
    device = x.device
    model = copy.deepcopy(model).to(device).eval()
    times: dict[bool, list[float]] = {True: [], False: []}
    with only_trainable(model, [*layers, classifier]) as trainable:
        for i in range(repeats + 2):  # the first round warms up both paths
            for filtered in (True, False):
                swap = filtered_convs(model, layers, patch) if filtered else contextlib.nullcontext()
                with swap:
                    sync(device)
                    start = time.perf_counter()
                    F.cross_entropy(model(x), y).backward()
                    sync(device)
                    if i >= 2:
                        times[filtered].append(time.perf_counter() - start)
                for p in trainable:
                    p.grad = None
    return statistics.median(times[True]), statistics.median(times[False])


@dataclass(frozen=True)
class FilterComparison(Result):
    """Gradient filtering vs plain backprop on the same layers, from the same weights and data order."""

    filtered: FineTuneSummary
    backprop: FineTuneSummary
    accuracy_gap_points: float  # backprop test accuracy minus filtered, in percentage points
    filtered_step_seconds: float  # forward+backward, median, timed interleaved with the other
    backprop_step_seconds: float
    step_speedup: float  # backprop_step_seconds / filtered_step_seconds
    layer_memory_reduction: float  # summed over the trained convs: plain bytes / filtered bytes
    model_memory_reduction: float  # whole training forward: plain bytes / filtered bytes


def compare_gradient_filter(model: nn.Module, data: DataBundle, section: TrainSection, *, device: torch.device,
                            seed: int) -> FilterComparison:
    """Fine-tune two copies of ``model`` (left untouched): gradient-filtered and plain backprop; then
    time one step of each, interleaved, on the same batch."""
    filtered = train_gradient_filter(copy.deepcopy(model), data, section, device=device, seed=seed).summary
    backprop = train_gradient_filter(copy.deepcopy(model), data, section, device=device, seed=seed,
                                     filtered=False).summary
    x, y = next(image_batches(data.train, filtered.batch_size, data.preprocessing, device=device))
    filtered_step, backprop_step = interleaved_step_seconds(model, x, y, filtered.layers,
                                                            filtered.classifier, section.gradient_filter.patch)
    plain = sum(layer.standard_bytes for layer in filtered.layer_memory)
    reduced = sum(layer.filtered_bytes for layer in filtered.layer_memory)
    return FilterComparison(
        filtered=filtered, backprop=backprop,
        accuracy_gap_points=100.0 * (backprop.test_accuracy - filtered.test_accuracy),
        filtered_step_seconds=filtered_step, backprop_step_seconds=backprop_step,
        step_speedup=backprop_step / filtered_step,
        layer_memory_reduction=plain / max(1, reduced),
        model_memory_reduction=backprop.saved_activation_bytes / max(1, filtered.saved_activation_bytes))


def run(bench: Workbench) -> dict[str, Any]:
    config = bench.config
    setup = config.methods_setup
    recipe = bench.recipe(setup, None, FINE_TUNE)
    data = bench.data(recipe)
    repeats = []
    for repeat in range(config.repeats):
        seed = config.seed + repeat
        model = bench.fresh_full_model(recipe, seed)
        # Plain backprop on every parameter, unmasked: the loop the pruning comparison trains with.
        train_masked(model, None, data, recipe.train, device=bench.device, seed=seed, epochs=range(PRETRAIN_EPOCHS),
                     total_epochs=PRETRAIN_EPOCHS)
        start = top1_accuracy(model, unaugmented(data.test, data.preprocessing, bench.device))
        result = compare_gradient_filter(model, data, recipe.train, device=bench.device, seed=seed)
        repeats.append({"seed": seed, "start_accuracy": start, **result.to_dict()})
    summary = {
        "filtered_accuracy": spread_dict([r["filtered"]["test_accuracy"] for r in repeats]),
        "backprop_accuracy": spread_dict([r["backprop"]["test_accuracy"] for r in repeats]),
        "accuracy_gap_points": spread_dict([r["accuracy_gap_points"] for r in repeats]),
        "step_speedup": spread_dict([r["step_speedup"] for r in repeats]),
        "layer_memory_reduction": spread_dict([r["layer_memory_reduction"] for r in repeats]),
        "model_memory_reduction": spread_dict([r["model_memory_reduction"] for r in repeats]),
        "run_time_ratio": spread_dict([r["backprop"]["seconds"] / r["filtered"]["seconds"] for r in repeats]),
    }
    return {"setup": setup.name, "pretrain_epochs": PRETRAIN_EPOCHS, "fine_tune": list(FINE_TUNE),
            "test_images": len(data.test), "layers": recipe.train.gradient_filter.layers, "patch": recipe.train.gradient_filter.patch,
            "repeats": repeats, "summary": summary}


def render(result: dict[str, Any]) -> str:
    repeats = result["repeats"]
    s, first = result["summary"], repeats[0]
    out = [f"**{result['setup']}**: pretrained with backprop for {result['pretrain_epochs']} epochs, then the last "
           f"{result['layers']} conv layers and the classifier ({count(first['filtered']['trainable_params'])} "
           f"parameters) fine-tuned for `{' '.join(result['fine_tune'])}` at batch {first['filtered']['batch_size']}, "
           f"R = {result['patch']}. Test accuracy before fine-tuning: "
           + " / ".join(f"{r['start_accuracy']:.1%}" for r in repeats) + " (per repeat).\n",
           table(["", "gradient filter", "backprop, same layers", "backprop / filter"], [
               ["test accuracy", spread(s["filtered_accuracy"], 1, "%", scale=100),
                spread(s["backprop_accuracy"], 1, "%", scale=100),
                f"gap {spread(s['accuracy_gap_points'], 2, ' pt')}"],
               ["activations saved by the trained convs", kib(_layer_bytes(first, "filtered_bytes")),
                kib(_layer_bytes(first, "standard_bytes")), spread(s["layer_memory_reduction"], 2, "x")],
               ["activations saved by one training forward", kib(first["filtered"]["saved_activation_bytes"]),
                kib(first["backprop"]["saved_activation_bytes"]), spread(s["model_memory_reduction"], 2, "x")],
               ["forward + backward step (interleaved)", f"{first['filtered_step_seconds'] * 1e3:.2f} ms",
                f"{first['backprop_step_seconds'] * 1e3:.2f} ms", spread(s["step_speedup"], 2, "x")],
               ["whole fine-tuning run (evaluation included)", f"{first['filtered']['seconds']:.1f} s",
                f"{first['backprop']['seconds']:.1f} s", spread(s["run_time_ratio"], 2, "x")],
           ]),
           "\nPer trained conv (first repeat): bytes autograd saves for backward on one batch.\n",
           table(["layer", "kernel", "stride", "input (N,C,H,W)", "plain", "filtered", "reduction",
                  "(R·stride)²"],
                 [[m["name"], "x".join(map(str, m["kernel"])), "x".join(map(str, m["stride"])),
                   "x".join(map(str, m["input_shape"])), kib(m["standard_bytes"]), kib(m["filtered_bytes"]),
                   f"{m['reduction']:.2f}x", f"{m['expected_reduction']:.0f}x"]
                  for m in first["filtered"]["layer_memory"]])]
    out.append("\nAccuracy gap = backprop minus gradient filter, in points (one test image is "
               f"{100 / result['test_images']:.2f} points). The whole forward saves more than the trained convs "
               "(BatchNorm, ReLU and the classifier keep their inputs), so its reduction is smaller than the "
               "per-layer one. Step times are medians of steps alternated between the two on the same batch.\n")
    return "\n".join(out)


def _layer_bytes(entry: dict[str, Any], key: str) -> int:
    return sum(m[key] for m in entry["filtered"]["layer_memory"])


register_comparison(Comparison(
    name="gradient_filter", title="Gradient filtering vs backprop on the same layers",
    question="How much activation memory and step time does gradient filtering save when fine-tuning the last "
             "layers, and what does it cost in accuracy against exact gradients on the same layers?",
    run=run, render=render))
