"""Where NeuroFlux's accuracy is lost: every exit's head against linear probes on the same unit's features.

NeuroFlux and backprop train at the stringent budget (the runs of comparison 1 where the suite made
them, fresh otherwise). For every unit that has an exit, three linear probes (multinomial logistic
regression, scikit-learn, on standardized features average-pooled to 2x2) are fitted on the training
images' features and scored on the validation split: on NeuroFlux's unit, on backprop's unit, and on
the same unit of the untrained network (what the architecture gives for free). Set beside NeuroFlux's
own head at that unit, they separate the two ways a local learner loses accuracy: features that
carry less (NeuroFlux's probe below backprop's), or a head that reads less than its features carry
(the head below the probe). Everything is on the validation split: nothing here touches the test split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.markdown import percent, table
from benchmarks.registry import Comparison, register_comparison
from benchmarks.workbench import RunSpec, Workbench
from nfcompile.data.sources import unaugmented
from nfcompile.learning.evaluate import EVAL_BATCH_SIZE, eval_mode, top1_accuracies
from nfcompile.data.batches import batch_order

BACKPROP = ("train.method=backprop",)
POOLED = 2  # features pooled to POOLED x POOLED per channel: keeps a little layout, bounds the probe's width
PROBE_ITERATIONS = 500


@torch.no_grad()
def unit_features(units: nn.ModuleList, source, wanted: list[int]) -> dict[int, np.ndarray]:
    """Every wanted unit's output over ``source``, pooled and flattened, in eval mode."""
    last = max(wanted)
    chunks: dict[int, list[np.ndarray]] = {k: [] for k in wanted}
    with eval_mode(*units):
        for indices in batch_order(len(source), EVAL_BATCH_SIZE, False, None):
            x, _ = source.fetch(indices, None, train=False)
            for index, unit in enumerate(units[: last + 1]):
                x = unit(x)
                if index in chunks:
                    h = F.adaptive_avg_pool2d(x, POOLED) if x.dim() == 4 else x
                    chunks[index].append(h.flatten(1).float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in chunks.items()}


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> float:
    """A linear classifier's validation accuracy on fixed features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_ITERATIONS))
    probe.fit(train_x, train_y)
    return float(probe.score(val_x, val_y))


def _probes(units: nn.ModuleList, data, exits: list[int], device) -> dict[int, float]:
    train = unit_features(units, unaugmented(data.train, data.preprocessing, device), exits)
    val = unit_features(units, unaugmented(data.val, data.preprocessing, device), exits)
    train_y, val_y = data.train.labels.numpy(), data.val.labels.numpy()
    return {k: probe_accuracy(train[k], train_y, val[k], val_y) for k in exits}


def run(bench: Workbench) -> dict[str, Any]:
    config = bench.config
    setups = []
    for setup in config.setups:
        label = config.ablation_budget
        neuroflux = bench.train(RunSpec(setup, label))
        backprop = bench.train(RunSpec(setup, label, BACKPROP))
        if neuroflux.net is None or backprop.net is None:
            setups.append({"setup": setup.name, "budget": label, "note": "a contender did not fit"})
            continue
        recipe = bench.recipe(setup, label)
        data = bench.data(recipe)
        exits = neuroflux.net.exit_units
        val = unaugmented(data.val, data.preprocessing, bench.device)
        with eval_mode(neuroflux.net):
            heads = top1_accuracies(lambda x: [v for _, v in sorted(neuroflux.net.forward_exits(x).items())], val)
        with eval_mode(backprop.net):  # on the same images as the heads (its record's is the per-epoch subset's)
            (backprop_full,) = top1_accuracies(lambda x: [backprop.net(x)], val)
        untrained = bench.fresh_unit_net(recipe, config.seed).to(bench.device)
        rows = {
            "neuroflux": _probes(neuroflux.net.units, data, exits, bench.device),
            "backprop": _probes(backprop.net.units, data, exits, bench.device),
            "untrained": _probes(untrained.units, data, exits, bench.device),
        }
        setups.append({
            "setup": setup.name, "budget": label, "exits": exits, "unit_names": neuroflux.net.unit_names,
            "head_val_accuracy": heads, "probe_val_accuracy": {k: [v[e] for e in exits] for k, v in rows.items()},
            "backprop_val_accuracy": backprop_full,
            "batch_sizes": {"neuroflux": list(neuroflux.record.batch_sizes),
                            "backprop": list(backprop.record.batch_sizes)},
            "train_samples": len(data.train), "val_samples": len(data.val)})
    return {"pooled": POOLED, "setups": setups}


def _points(difference: float) -> str:
    return f"{difference * 100:+.1f} pt"


def render(result: dict[str, Any]) -> str:
    pooled = result["pooled"]
    out = [f"Linear probes (logistic regression on standardized features average-pooled to {pooled}x{pooled}, "
           "fitted on the training images, scored on the validation split) on each exit's unit, beside "
           "NeuroFlux's own head there. NeuroFlux's probe below backprop's: its features carry less; its "
           "head below its own probe: the head reads less than its features carry.\n"]
    for entry in result["setups"]:
        if "exits" not in entry:
            out.append(f"**{entry['setup']}**: {entry['note']}\n")
            continue
        probes = entry["probe_val_accuracy"]
        out.append(f"**{entry['setup']}** at the {entry['budget']} budget ({entry['train_samples']} training, "
                   f"{entry['val_samples']} validation images; NeuroFlux blocks at "
                   f"{'/'.join(map(str, entry['batch_sizes']['neuroflux']))}, backprop at batch "
                   f"{entry['batch_sizes']['backprop'][0]}, whose own classifier reached "
                   f"{percent(entry['backprop_val_accuracy'])})\n")
        rows = []
        for i, unit in enumerate(entry["exits"]):
            head, nf, bp, raw = (entry["head_val_accuracy"][i], probes["neuroflux"][i], probes["backprop"][i],
                                 probes["untrained"][i])
            rows.append([f"exit_{unit:02d} ({entry['unit_names'][unit]})", percent(head), percent(nf),
                         percent(bp), percent(raw), _points(nf - bp), _points(head - nf)])
        out.append(table(["exit (unit)", "NeuroFlux head", "probe: NeuroFlux", "probe: backprop",
                          "probe: untrained", "features, NF - BP", "head - own probe"], rows))
    return "\n".join(out)


register_comparison(Comparison(
    name="accuracy_gap", title="Where the accuracy is lost: exit heads against linear probes",
    question="Is NeuroFlux behind backprop because its local objective learns features that carry less, "
             "or because its heads read less than the features carry?", run=run, render=render))
