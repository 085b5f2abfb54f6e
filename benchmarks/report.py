"""RESULTS.md, rendered from one results file: `python -m benchmarks.report [RESULTS_JSON]`.

Every figure in it comes from the JSON; the only numbers typed here are the published NeuroFlux
figures that ours are set beside (Saikumar & Varghese, EuroSys 2024, arXiv 2402.14139).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, Sequence

from nfcompile.core.io import read_json, write_text
from nfcompile.recipe.schema import Recipe

from benchmarks.markdown import DASH, mib, table
from benchmarks.goals import render_goals
from benchmarks.registry import Headline, list_comparisons

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"

# (label, low, high) of the published ranges, keyed like the comparisons' headlines.
PUBLISHED = {
    "training_speedup": ("training speed-up over backprop under a tight budget (ours: the stringent one)", 2.3, 6.1),
    "param_reduction": ("fewer parameters in the deliverable than the full model", 10.9, 29.4),
    "throughput_gain": ("higher inference throughput than the full model", 1.6, 4.0),
}


def _why_different(document: dict[str, Any]) -> str:
    """How these runs differ from the published setting, with this run's own figures."""
    machine, setups = document["machine"], document["setups"]
    widths = sorted({str(s["recipe"]["model"]["width"]) for s in setups})
    datasets = sorted({s["recipe"]["data"]["dataset"] for s in setups})
    train = sorted({s["samples"]["train"] for s in setups})
    val = sorted({s["samples"]["val"] for s in setups})
    monitor = sorted({s["samples"].get("monitor", s["samples"]["val"]) for s in setups})
    test = sorted({s["samples"]["test"] for s in setups})
    epochs = sorted({s["recipe"]["train"]["epochs"] for s in setups})
    named = {s["name"]: _block_epochs(s["recipe"]["train"]) for s in setups}
    shortened = "".join(f"; {name}'s first blocks {epochs}" for name, epochs in named.items() if epochs)
    return (
        "The published figures come from full-width CNNs (VGG, ResNet, MobileNet) on CIFAR-10/100 and larger "
        "images, trained on GPUs. These runs differ in ways that move every ratio:\n\n"
        + _hardware(machine) +
        f"- **Models.** Width {'/'.join(widths)} (parameter counts in section 2). In these CNNs the parameters "
        "sit mostly in the deep units and the multiply-accumulates are spread over all of them (the early "
        "units run on the largest maps), so an exit saves far more parameters than compute: throughput "
        "follows the MAC reduction in the table above, not the parameter reduction.\n"
        f"- **Data and schedules.** {', '.join(datasets)}; {_values(train)} training images, {_values(epochs)} "
        f"epochs (NeuroFlux: per block{shortened}); accuracies from {_values(val)} validation and {_values(test)} test "
        f"images (one test image is {100 / min(test):.2f} points); time to accuracy is read at the end of "
        f"each epoch{'' if monitor == val else ', on the ' + _values(monitor) + ' validation images every epoch evaluates'}.\n"
        "- **Selection.** The deliverable is the exit `nfcompile build` selects (the smallest within the "
        "recipe's margin of NeuroFlux's best exit, at the recipe's `select.confidence`, on the validation split); "
        "the parameter reduction is whatever that exit's depth gives against the full backprop model, not a chosen "
        "operating point.\n"
        "- **Noise.** The machine is shared with other work (load averages above); every ratio is paired "
        "within a repeat to cancel that as far as possible, and the spread over repeats is shown."
    )


def _hardware(machine: dict[str, Any]) -> str:
    if machine.get("gpu"):
        return (f"- **Hardware.** {machine['gpu']}: a GPU, as in the paper, training far smaller models than the "
                "published ones.\n")
    return (f"- **Hardware.** {machine.get('cpu_count')} CPU cores, {machine.get('torch_threads')} torch "
            "thread(s). On a GPU a small batch leaves most of the device idle, so the larger batches NeuroFlux's "
            "blocks get come nearly free; on a CPU a step's cost grows almost linearly with the batch, and a "
            "larger batch saves only the per-step overhead. A CPU speed-up measures that overhead, not idle "
            "parallel hardware.\n")


def _values(values: list[Any]) -> str:
    return "/".join(str(v) for v in values)


def merge_documents(document: dict[str, Any], later: list[dict[str, Any]]) -> dict[str, Any]:
    """One document: ``document`` with the comparisons of ``later`` runs, each of which replaces the
    same comparison of an earlier run in its place, or joins at the end (each keeps the command,
    machine load and time of its own run). A later run's setups replace the same-named ones too, so the
    setups table shows what the latest figures ran; a budget the later run did not measure (it ran no
    comparison at that budget) is kept from the earlier run where the recipe is the same. A comparison
    that ran a setup under another recipe than the table's carries ``earlier_recipes``: per such setup,
    the recipe fields that differ."""
    comparisons = list(document["comparisons"])
    ran_with = [_recipes(document)] * len(comparisons)  # per comparison: the recipes of the run it came from
    setups = {s["name"]: s for s in document["setups"]}
    for extra in later:
        for setup in extra.get("setups", []):
            earlier = setups.get(setup["name"])
            if earlier is not None and earlier["recipe"] == setup["recipe"]:
                setup = {**setup, "budgets": {**earlier.get("budgets", {}), **setup.get("budgets", {})}}
            setups[setup["name"]] = setup
        for outcome in extra["comparisons"]:
            tagged = {**outcome, "run": {"command": extra["command"], "started": extra["started"],
                                         "load_average": extra["machine"].get("load_average"),
                                         "load_average_end": extra["machine"].get("load_average_end")}}
            names = [c["name"] for c in comparisons]
            if outcome["name"] in names:
                comparisons[names.index(outcome["name"])] = tagged
                ran_with[names.index(outcome["name"])] = _recipes(extra)
            else:
                comparisons.append(tagged)
                ran_with.append(_recipes(extra))
    selecting = {c.name for c in list_comparisons() if c.selects_exits}
    for index, (outcome, recipes) in enumerate(zip(comparisons, ran_with)):
        named = _setups_named(outcome.get("result"))
        earlier_recipes = {name: changed for name in setups if name in named and name in recipes  # the table's order
                           and (changed := recipe_changes(recipes[name], setups[name]["recipe"],
                                                          selects_exits=outcome["name"] in selecting))}
        if earlier_recipes:
            comparisons[index] = {**outcome, "earlier_recipes": earlier_recipes}
    return dict(document, comparisons=comparisons, setups=list(setups.values()))


def _recipes(document: dict[str, Any]) -> dict[str, Any]:
    return {s["name"]: s["recipe"] for s in document.get("setups", [])}


def _setups_named(result: Any) -> set[str]:
    """The setups a comparison's result reports on: every ``setup`` name in it, at any depth."""
    if isinstance(result, dict):
        named = {result["setup"]} if isinstance(result.get("setup"), str) else set()
        return named.union(*(_setups_named(value) for value in result.values()))
    if isinstance(result, list):
        return set().union(*(_setups_named(value) for value in result))
    return set()


# A run that predates a field ran it at its default, except these: before select.confidence, selection judged
# the accuracies as measured.
BEFORE_THE_FIELD = {"select.confidence": None}


def recipe_changes(earlier: dict[str, Any], later: dict[str, Any], *, selects_exits: bool) -> list[str]:
    """The dotted recipe fields a comparison's figures ran otherwise than ``later`` says: fields a recipe lacks
    (its run predates them) at their default or `BEFORE_THE_FIELD`; the select section only where the figures
    depend on which exit ships."""
    defaults = _default_recipe()
    changed = recipe_differences(_filled(earlier, defaults), _filled(later, defaults))
    return [field for field in changed if selects_exits or not field.startswith("select.")]


@functools.cache
def _default_recipe() -> dict[str, Any]:
    """Built once: a render compares every comparison's recipe with the latest (read, never changed)."""
    return Recipe(name="defaults").model_dump(mode="json", by_alias=True)


def _filled(recipe: dict[str, Any], defaults: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    filled = dict(recipe)
    for key, default in defaults.items():
        if key not in filled:
            filled[key] = BEFORE_THE_FIELD.get(prefix + key, default)
        elif isinstance(default, dict) and isinstance(filled[key], dict):
            filled[key] = _filled(filled[key], default, f"{prefix}{key}.")
    return filled


def recipe_differences(earlier: dict[str, Any], later: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted fields whose values differ between two recipes (as the results files hold them)."""
    differing = []
    for key in sorted(set(earlier) | set(later)):
        before, after = earlier.get(key), later.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            differing += recipe_differences(before, after, f"{prefix}{key}.")
        elif before != after:
            differing.append(prefix + key)
    return differing


def earlier_recipe_note(earlier_recipes: dict[str, list[str]]) -> str:
    """What a comparison run under an earlier recipe says above its figures, setups grouped by what differs."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, fields in earlier_recipes.items():
        groups.setdefault(tuple(fields), []).append(name)
    return "; ".join(_and(names) + " ran with other " + ", ".join(f"`{field}`" for field in fields)
                     + " than the setups table shows" for fields, names in groups.items())


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def render_results(document: dict[str, Any], results_file: str, also: Sequence[str] = ()) -> str:
    comparisons = {c.name: c for c in list_comparisons()}
    first = results_file.split(" + ")[0]
    again = f"python -m benchmarks.report {first}" + (f" --also {' '.join(also)}" if also else "")
    parts = [
        "# Benchmark results\n",
        f"Rendered from `{results_file}` (again: `{again}`); regenerate rather than edit.\n",
        _header(document),
        "## Setups\n",
        _setups(document),
        "## Against the published NeuroFlux figures\n",
        _published(document, comparisons),
        "## Goals: does NeuroFlux pay for itself?\n",
        render_goals(document),
    ]
    for number, outcome in enumerate(document["comparisons"], start=1):
        name = outcome["name"]
        parts.append(f"## {number}. {outcome['title']}\n")
        parts.append(f"_{outcome['question']}_ ({outcome['seconds'] / 60:.1f} min)\n")
        if "run" in outcome:
            load = outcome["run"].get("load_average") or []
            end = outcome["run"].get("load_average_end")
            parts.append(f"(from a later run: `{outcome['run']['command']}`, {outcome['run']['started']}, load "
                         f"{_loads(load)}" + (f" at the start, {_loads(end)} at the end" if end else "") + ")\n")
        if outcome.get("earlier_recipes"):
            parts.append(f"**Earlier recipe:** {earlier_recipe_note(outcome['earlier_recipes'])}; these figures "
                         "come from that recipe.\n")
        if outcome["status"] != "ok":
            parts.append(f"**{outcome['status']}:** {outcome['reason']}\n")
        elif name in comparisons:
            parts.append(comparisons[name].render(outcome["result"]))
        else:
            parts.append(f"(no renderer registered for `{name}` in this version of the suite)\n")
    return "\n".join(parts).rstrip() + "\n"


def _header(document: dict[str, Any]) -> str:
    machine = document["machine"]
    config = document["config"]
    versions = document["versions"]
    cpus = machine.get("cpu_count")
    start, end = machine.get("load_average", []), machine.get("load_average_end", [])
    lines = [
        f"- **Command:** `{document['command']}` ({config['mode']} mode: {config['repeats']} repeat(s)"
        + (f", {config['pruning_repeats']} for pruning" if config.get("pruning_repeats") not in (None, config["repeats"])
           else "") + ", "
        f"budgets {', '.join(label for label, _ in config['budget_anchors'])}; "
        f"{document['seconds'] / 60:.0f} min, {document['started']} to {document['finished']})",
        f"- **Machine:** {machine.get('processor')}, {cpus} CPUs, {mib(machine.get('memory_bytes'), 0) or '?'} "
        f"RAM, {machine.get('platform')}" + (f"; GPU {machine['gpu']}" if machine.get("gpu") else "; training on "
                                            "the CPU"),
        f"- **Threads:** torch {machine.get('torch_threads')}, ONNX Runtime "
        f"{config.get('threads') or 'its default'}" + (" (the suite's setting: see `threads` in "
                                                      "benchmarks/config.py for why)" if config.get("threads") else ""),
        f"- **Load average** (1/5/15 min) at the start {_loads(start)}, at the end {_loads(end)}"
        + (f": above the {cpus} cores, so other processes competed for the CPU during the run"
           if cpus and max([*start, *end], default=0) > cpus else ""),
        "- **Libraries:** " + ", ".join(f"{name} {versions.get(name)}" for name in
                                       ("torch", "onnxruntime", "onnx", "onnxsim", "numpy", "python")
                                       if versions.get(name)),
    ]
    return "\n".join(lines) + "\n"


def _loads(values: Sequence[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "?"


def _heads(neuroflux: dict[str, Any]) -> str:
    head = neuroflux["head"]
    depth = head.get("depth", 1)
    width = f"up to {head['filters']} filters" if head.get("policy") == "adaptive" else f"{head['filters']} filters"
    pool = f", maps pooled to {head['pool_to']}x{head['pool_to']}" if head.get("pool_to") else ""
    slim = neuroflux.get("slim_heads", {})  # absent in results files from before the field
    batch = f" at batch {slim['batch_size']}" if "batch_size" in slim else ""
    shipped = (f"; exits ship slim heads ({slim['share']:g} of the filters, {slim['epochs']} epochs{batch}) where they "
               "do as well" if slim.get("share") else "")
    return f"{depth} conv{'s' if depth > 1 else ''}, {width}{pool}{shipped}"


def _val_samples(samples: dict[str, int]) -> str:
    """The validation split, and the part of it every epoch evaluates where that is less (older results
    files record no "monitor": every epoch evaluated the whole split)."""
    monitor = samples.get("monitor", samples["val"])
    return f"{samples['val']} ({monitor} every epoch)" if monitor < samples["val"] else str(samples["val"])


def _block_epochs(train: dict[str, Any]) -> str:
    """NeuroFlux's first blocks' own epochs (train.neuroflux.block_epochs, each capped by train.epochs), as
    3/3; empty where unset (and in results files from before the field). The rule of
    `nfcompile.stages.train.neuroflux.block_epochs`, read from a results file's recipe dict: a recipe
    of an older run need not validate against today's schema."""
    return "/".join(str(min(e, train["epochs"])) for e in train["neuroflux"].get("block_epochs", []))


def _epochs(train: dict[str, Any]) -> str:
    named = _block_epochs(train)
    epochs = f"{train['epochs']} (first blocks {named})" if named else str(train["epochs"])
    heads = train["neuroflux"].get("head_epochs", 0)  # absent in results files from before the field
    return f"{epochs}, then {heads} of the heads alone" if heads else epochs


def _setups(document: dict[str, Any]) -> str:
    labels = [label for label, _ in document["config"]["budget_anchors"]]
    anchors = dict(document["config"]["budget_anchors"])
    rows = []
    for setup in document["setups"]:
        recipe = setup["recipe"]
        samples = setup["samples"]
        rows.append([setup["name"], recipe["model"]["arch"], recipe["model"]["width"],
                     f"{recipe['data']['image_size']}px {recipe['data']['dataset']}",
                     f"{samples['train']}/{_val_samples(samples)}/{samples['test']}",
                     _epochs(recipe["train"]), _heads(recipe["train"]["neuroflux"]),
                     recipe["train"]["neuroflux"]["max_batch_size"],
                     " / ".join(mib(setup["budgets"].get(label)) or DASH for label in labels)])
    text = table(["setup", "model", "width", "input", "train/val/test images", "epochs", "NeuroFlux heads",
                  "largest batch", f"budgets ({' / '.join(labels)})"], rows)
    text += ("\nBudgets are the ones under which the planner gives plain backprop batch size "
             + ", ".join(f"{anchors[label]} ({label})" for label in labels)
             + " (the peak it measures at that batch, over the share of the budget the planner plans against)."
             + " The largest batch (`train.neuroflux.max_batch_size`) caps every contender's: NeuroFlux's blocks"
             + " and the batch the planner gives backprop, with and without checkpointing.\n")
    for name, why in document["config"].get("skipped", []):
        text += f"- Skipped **{name}**: {why}\n"
    return text


def _published(document: dict[str, Any], comparisons: dict[str, Any]) -> str:
    ours: dict[str, list[Headline]] = {key: [] for key in PUBLISHED}
    for outcome in document["comparisons"]:
        if outcome["status"] == "ok" and outcome["name"] in comparisons:
            for key, headline in comparisons[outcome["name"]].headlines(outcome["result"]).items():
                ours.setdefault(key, []).append(headline)
    rows = []
    for key, (label, low, high) in PUBLISHED.items():
        values = [v for headline in ours.get(key, []) for v in headline.values]
        context = "; ".join(h.context for h in ours.get(key, []) if h.context) or None
        if not values:
            rows.append([label, f"{low}{DASH}{high}x", "not measured in this run", None, None])
            continue
        rows.append([label, f"{low}{DASH}{high}x", f"{min(values):.2f}{DASH}{max(values):.2f}x "
                     f"({len(values)} figure(s))", _verdict(min(values), max(values), low, high), context])
    return (table(["figure", "published", "ours (range of means)", "ours vs published", "measured on"], rows)
            + "\n" + _why_different(document) + "\n")


def _verdict(low: float, high: float, published_low: float, published_high: float) -> str:
    if high < published_low:
        return "below the published range"
    if low > published_high:
        return "above the published range"
    if published_low <= low and high <= published_high:
        return "within the published range"
    return "overlaps the published range"


def shown_path(results_file: Path, results_md: Path) -> str:
    """How RESULTS.md names its results file: relative to the repository root for the default
    locations (the Markdown file's folder's parent), else as given."""
    try:
        return results_file.resolve().relative_to(results_md.resolve().parent.parent).as_posix()
    except ValueError:
        return str(results_file)


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.results import latest_results

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path,
                        help="results JSON (default: the newest in benchmarks/results)")
    parser.add_argument("--also", nargs="+", type=Path, default=[],
                        help="results files of later runs (e.g. --only ...) whose comparisons join this one's")
    parser.add_argument("--out", type=Path, default=RESULTS_MD, help="the Markdown file to write")
    args = parser.parse_args(argv)
    path = args.results or latest_results()
    if path is None:
        print("no results file found in benchmarks/results; run python -m benchmarks.run first", file=sys.stderr)
        return 2
    document = merge_documents(read_json(path), [read_json(extra) for extra in args.also])
    shown = " + ".join(shown_path(p, args.out) for p in [path, *args.also])
    write_text(args.out, render_results(document, shown, also=[shown_path(p, args.out) for p in args.also]))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
