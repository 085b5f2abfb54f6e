"""5. Pipeline overhead: what export, simplify, validate and INT8 cost next to training.

Runs the real pipeline (`nfcompile.pipeline.run_pipeline`, what `nfcompile build` runs) on every
setup at the deliverable budget and reads each stage's recorded seconds. Later repeats change only
the recipe's name, which the export stage reads and training does not: the pipeline reuses plan,
train, score and select and runs export onward again on the same trained model, so the deployment
stages are timed several times against one training.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from nfcompile.core.io import read_json
from nfcompile.core.results import StageRecord, Validation
from nfcompile.errors import GateFailed
from nfcompile.pipeline import STAGE_NAMES, run_pipeline
from nfcompile.runs import RunFolder
from nfcompile.recipe import with_overrides

from benchmarks.markdown import spread, table
from benchmarks.measures import ratio, spread_dict
from benchmarks.results import RESULTS_DIR
from benchmarks.registry import Comparison, register_comparison
from benchmarks.workbench import Workbench

DEPLOY = ("export", "validate_fp32", "quantize", "validate_int8")  # export includes onnxsim and its re-check
TRAIN = "train"
RAN = ("ok", "failed")  # a stage that failed its gate still ran (and was timed); reused or skipped ones did not


def run(bench: Workbench) -> dict[str, Any]:
    config = bench.config
    setups = []
    for setup in config.setups:
        recipe = bench.recipe(setup, config.deliverable_budget)
        folder = RunFolder.create(bench.scratch / "pipeline", recipe.name)
        repeats, int8 = [], None
        for repeat in range(config.repeats):
            named = recipe if repeat == 0 else with_overrides(recipe, [f"name={recipe.name}-{repeat}"])
            records = _stage_records(named, folder, resume=repeat > 0)
            repeats.append({name: {"status": record.status, "seconds": record.seconds, "reason": record.reason}
                            for name, record in records.items()})
            int8 = int8 or _int8_gate(records)
        setups.append({**_summary(setup.name, config.deliverable_budget, repeats), "int8_gate": int8})
    return {"setups": setups}


def _int8_gate(records: dict[str, StageRecord]) -> dict[str, Any] | None:
    """What the INT8 gate measured (on the test split, against the PyTorch exit), passed or not."""
    record = records.get("validate_int8")
    validation = record.result_as(Validation) if record is not None and record.status in RAN else None
    if validation is None:
        return None
    comparison = validation.comparison
    limit = next((c.limit for c in validation.checks if c.name == "int8.accuracy_drop"), None)
    return {"status": record.status, "limit": limit, "reference_accuracy": comparison.reference_accuracy,
            "int8_accuracy": comparison.candidate_accuracy, "top1_agreement": comparison.top1_agreement,
            "samples": comparison.samples, "candidate": comparison.candidate}


def _stage_records(recipe, folder: RunFolder, *, resume: bool) -> dict[str, StageRecord]:
    """Every stage's record from one pipeline run. A failed gate (say INT8 accuracy) stops the build,
    but the stages up to it were timed and recorded in the run folder: those are read back, and the
    failure shows as that stage's status and reason."""
    started = time.time()
    try:
        return run_pipeline(recipe, folder, resume=resume).records
    except GateFailed:
        records = {}
        for name in STAGE_NAMES:
            path = folder.record_path(name)
            if not path.is_file():
                break
            record = StageRecord.from_dict(read_json(path))
            if path.stat().st_mtime < started:  # written by an earlier run in this folder: reused now
                record = dataclasses.replace(record, status="reused")
            records[name] = record
            if record.status == "failed":
                break
        return records


def _summary(setup: str, budget: str, repeats: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    # A reused stage keeps the seconds of the run that made it: count each stage only where it ran.
    ran = lambda name: [r[name]["seconds"] for r in repeats if r.get(name, {}).get("status") in RAN]
    train_seconds = repeats[0][TRAIN]["seconds"]
    deploy = [sum(r[name]["seconds"] for name in DEPLOY if r.get(name, {}).get("status") in RAN) for r in repeats]
    stages = {name: {"status": sorted({r[name]["status"] for r in repeats if name in r}),
                     "reason": next((r[name]["reason"] for r in repeats if r.get(name, {}).get("reason")), ""),
                     "seconds": spread_dict(ran(name)),
                     "share_of_training": spread_dict([ratio(s, train_seconds) for s in ran(name)])}
              for name in STAGE_NAMES if any(name in r for r in repeats)}
    # The first run made everything: plan, exit scoring (an ONNX export and timing per exit), bundle...
    rest = sum(r["seconds"] for name, r in repeats[0].items() if name != TRAIN and r["status"] in RAN)
    return {"setup": setup, "budget": budget, "train_seconds": train_seconds, "stages": stages,
            "first_run_other_seconds": rest,
            "deploy_seconds": spread_dict(deploy),
            "deploy_share_of_training": spread_dict([ratio(d, train_seconds) for d in deploy]),
            "reused_training": [r[TRAIN]["status"] for r in repeats]}


def render(result: dict[str, Any]) -> str:
    out = [f"Deployment = {' + '.join(DEPLOY)} (`export` includes onnxsim and the re-validation it needs). "
           "Shares are stage seconds / training seconds of the same pipeline run; repeats after the first "
           "reuse the trained model, so training is timed once and the other stages several times.\n"]
    for entry in result["setups"]:
        stages = [(name, entry["stages"][name]) for name in STAGE_NAMES if name in entry["stages"]]
        rows = [[name, "/".join(stage["status"]) + (f" ({stage['reason']})" if stage["reason"] else ""),
                 spread(stage["seconds"], 2, " s"), spread(stage["share_of_training"], 1, "%", scale=100)]
                for name, stage in stages]
        out.append(f"**{entry['setup']}** at the {entry['budget']} budget: export + simplify + validate + INT8 "
                   f"take {spread(entry['deploy_seconds'], 1, ' s')}, "
                   f"{spread(entry['deploy_share_of_training'], 1, '%', scale=100)} of the "
                   f"{entry['train_seconds']:.1f} s of training; every other stage of the first build together "
                   f"(plan, exit scoring, selection, bundle included) {entry['first_run_other_seconds']:.1f} s.\n")
        out.append(table(["stage", "status", "seconds", "of training time"], rows))
        gate = entry.get("int8_gate")  # recorded from 2026-12-06 on
        if gate:
            out.append(f"INT8 gate ({gate['status']}): {gate['candidate']} {gate['int8_accuracy']:.2%} against "
                       f"PyTorch's {gate['reference_accuracy']:.2%} on {gate['samples']} test images "
                       f"(a drop of {(gate['reference_accuracy'] - gate['int8_accuracy']) * 100:+.2f} pt; the gate allows "
                       f"{gate['limit'] * 100:g} pt), top-1 agreement {gate['top1_agreement']:.2%}.\n")
    latest = latest_before_after()
    if latest is not None:
        out.append(render_before_after(read_json(latest), latest.name))
    reuse = latest_profile_cache()
    if reuse is not None:
        out.append(render_profile_cache(read_json(reuse), reuse.name))
    return "\n".join(out)


def latest_before_after(folder: Path = RESULTS_DIR) -> Path | None:
    """The newest results file of `python -m benchmarks.before_after`, if any was committed."""
    from benchmarks.before_after import NAME

    return _newest_results(folder, NAME)


def _newest_results(folder: Path, name: str) -> Path | None:
    """The newest `<date>-<name>.json` (or `-2`, `-3`...) in ``folder``, if any."""
    found = [*folder.glob(f"*-{name}.json"), *folder.glob(f"*-{name}-*.json")]
    # Newest by the date each file records: a day's second file (-2) does not sort after its first.
    return max(found, key=lambda path: (read_json(path).get("date", ""), path.name)) if found else None


BUILD_STAGES = ("plan", "train", "score", "select", "export", "bench", "bundle")


def _builds_table(runs: list[dict[str, Any]], label: str) -> str:
    """One row per timed quickstart build: stage seconds, plan and scoring against its own training,
    wall and CPU time, load. ``label``: the run field that tells the contenders apart."""
    header = ["round", label, *(f"{s} s" for s in BUILD_STAGES), "plan / train", "score / train", "build wall s",
              "build CPU s", "load before -> after (1 min)"]
    rows = []
    for run in runs:
        seconds = {k: v["seconds"] for k, v in run.get("stages", {}).items() if v["status"] in RAN}
        shares = [f"{seconds[s] / seconds['train'] * 100:.0f}%" if seconds.get("train") and s in seconds else "–"
                  for s in ("plan", "score")]
        rows.append([run["round"], run[label], *(f"{seconds[s]:.1f}" if s in seconds else "–" for s in BUILD_STAGES),
                     *shares, f"{run['wall_seconds']:.1f}", f"{run['cpu_seconds']:.1f}",
                     f"{run['load_average_before'][0]:.2f} -> {run['load_average_after'][0]:.2f}"])
    return table(header, rows)


def render_before_after(document: dict[str, Any], name: str) -> str:
    """The quickstart built by an earlier revision and by this one, interleaved in one run."""
    runs = document["runs"]
    train_seconds = {(run["round"], run["code"]): run["stages"]["train"]["seconds"] for run in runs
                     if run.get("stages", {}).get("train", {}).get("status") in RAN}
    # Training changes between revisions too (what a block measures, the batches the plan checks), so
    # plan and scoring are read against each build's own training, and the training ratio is shown.
    ratios = sorted(train_seconds[(r, "after")] / train_seconds[(r, "before")]
                    for r in {run["round"] for run in runs}
                    if (r, "after") in train_seconds and (r, "before") in train_seconds)
    training = (f" Training itself took {ratios[0]:.2f}-{ratios[-1]:.2f}x as long after as before in the same "
                "round, so plan and scoring are compared as shares of each build's own training."
                if ratios else "")
    return "\n".join([
        f"**Quickstart before and after** (`{document['command']}`, {name}): `{document['recipe']}` built by "
        f"{document['before'][:10]} (before) and {document['after'][:10]}"
        f"{' plus uncommitted changes' if document.get('after_dirty') else ''} (after), one build after the other "
        f"in each round, in the table's order, on {_machine(document)}. CPU time is the build process's "
        "user + system time; the load average (1 min) before and after each build says how busy the machine was "
        f"(other users' jobs included).{training}\n",
        _builds_table(runs, "code")])


def _machine(document: dict[str, Any]) -> str:
    processor = (document.get("machine") or {}).get("processor")  # recorded from 2026-12-05 on
    return f"{processor} ({document['cpu_count']} CPUs)" if processor else f"{document['cpu_count']} CPUs"


def latest_profile_cache(folder: Path = RESULTS_DIR) -> Path | None:
    """The newest results file of `python -m benchmarks.profile_cache`, if any was committed."""
    return _newest_results(folder, "profile-cache")


def render_profile_cache(document: dict[str, Any], name: str) -> str:
    """The quickstart built with an empty and with a warm profile cache, interleaved in one run."""
    return "\n".join([
        f"**Quickstart with reused step profiles** (`{document['command']}`, {name}): `{document['recipe']}` "
        "built by the same code with an empty profile cache (a first build: every unit, block check and "
        "backprop baseline measured) and with the cache an earlier build filled "
        f"(`train.neuroflux.reuse_profiles`), one build after the other in each round, in the "
        f"table's order, on {_machine(document)}.\n",
        _builds_table(document["runs"], "profiles")])


register_comparison(Comparison(
    name="pipeline_overhead", title="Pipeline overhead: export, simplify, validate and INT8 vs training",
    question="How much time does turning the trained model into a validated ONNX + INT8 deliverable add "
             "to training?",
    run=run, render=render))
