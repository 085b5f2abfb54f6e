"""Scaling: block training on 1 and 2 processes (torchrun), same global batch.

Both world sizes are real `torch.distributed.run --standalone` jobs of `benchmarks/scaling_worker.py`,
which trains exactly as `nfcompile build`'s train stage does (`distributed_job`, then `train_model`: one
DDP per unit+head, sharded training and validation sets and caches, validation counts summed over the
ranks): on the CPU with gloo and one thread per process; with `--device cuda` on a machine with two or
more GPUs, with nccl and one GPU per process (`LOCAL_RANK`). They train the same plan, made once here
for one process: the suite's first setup (ResNet-18) at the ablation budget. The same global batch per
block: the 1-process job trains every block at the plan's batch rounded down to an even number b, the
2-process job at b/2 per rank; with the shard half the size, every epoch takes the same optimizer steps,
over the same global batch, at the same learning rate (scaled to world size x per-rank batch).
`nfcompile build --nproc 2` would instead plan per process under the same budget and train each rank at
about the 1-process batch, doubling the global batch: that measures something else (a larger batch), so
this comparison fixes the plan.

Per block: samples/s = samples trained (world size x shard length x epochs) / the block's epoch seconds
on rank 0 (its steps and its per-epoch sharded validation; not the plan, process start, data loading, or
the caching pass after the block, reported beside). The runs alternate 1, 2, 2, 1, ...
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.cpu import children_cpu_seconds
from benchmarks.markdown import batches, table
from benchmarks.registry import Comparison, register_comparison
from benchmarks.workbench import Workbench

REPO = Path(__file__).resolve().parents[2]
WORLD_SIZES = (1, 2)
ROUNDS = 2  # full mode: each world size runs this many times, alternating which goes first (else once)
EPOCHS = 3  # per block (at most): fewer than the other comparisons' 5, so that four jobs fit in ~10 minutes
TIMEOUT_SECONDS = 1800


def even_batches(plan_batches: list[int]) -> list[int]:
    """The global batch of every block: the plan's, rounded down to an even number (at least 2), so that
    two ranks split it exactly."""
    return [max(2, b - b % 2) for b in plan_batches]


def _plan_for(plan, global_batches: list[int], world: int):
    """The plan with every block at ``global_batch / world`` per rank (a plan is per process), evaluating
    at that batch too: the planned evaluation batches were measured against the one-process steps."""
    blocks = tuple(dataclasses.replace(b, batch_size=g // world, evaluation_batch_size=0)
                   for b, g in zip(plan.blocks, global_batches))
    return dataclasses.replace(plan, blocks=blocks, train_samples=math.ceil(plan.train_samples / world),
                               val_samples=math.ceil(plan.val_samples / world))


def backend_for(device: str, cuda_devices: int) -> str | None:
    """nccl with one GPU per process where the suite runs on CUDA with two GPUs or more, gloo on the CPU;
    None where the suite runs on CUDA with fewer than two GPUs (nothing to scale out to)."""
    if device.startswith("cuda"):
        return "nccl" if cuda_devices >= len(WORLD_SIZES) else None
    return "gloo"


def _launch(job: Path, world: int, backend: str) -> dict[str, Any]:
    """One torchrun job of the worker; returns rank 0's record plus the job's wall, children CPU, load."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if backend == "gloo":
        env["OMP_NUM_THREADS"] = "1"  # one thread per process: two processes on the two cores
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
               "-m", "benchmarks.scaling_worker", str(job)]
    load_before = list(os.getloadavg())
    cpu, wall = children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS)
    wall, cpu = time.perf_counter() - wall, children_cpu_seconds() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"{world}-process job failed ({done.returncode}): {done.stderr[-2000:]}")
    record = json.loads(job.with_suffix(".out.json").read_text())
    return {**record, "job_wall_seconds": wall, "job_cpu_seconds": cpu, "load_before": load_before,
            "load_after": list(os.getloadavg())}


def _block_figures(result: dict[str, Any], world: int, train_samples: int) -> list[dict[str, Any]]:
    shard = math.ceil(train_samples / world)
    out = []
    for block in result["blocks"]:
        # The units' epochs only: head epochs (neuroflux.head_epochs) follow them in the history.
        seconds = sum(epoch["seconds"] for epoch in block["history"][:block["epochs_run"]])
        samples = world * shard * block["epochs_run"]
        out.append({"index": block["index"], "units": list(block["units"]), "per_rank_batch": block["batch_size"],
                    "global_batch": world * block["batch_size"], "epochs": block["epochs_run"],
                    "samples": samples, "train_seconds": seconds,
                    "samples_per_second": samples / seconds if seconds else None,
                    "cache_seconds": block["cache_seconds"],
                    "best_val_accuracy": max(block["best_val_accuracy"], default=None)})
    return out


def run(bench: Workbench) -> dict[str, Any]:
    import torch

    from nfcompile.recipe import recipe_dict

    config = bench.config
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend = backend_for(bench.device.type, cuda_devices)  # the resolved device: --device auto too
    if backend is None:
        raise RuntimeError(f"the suite runs on {bench.device} and this machine has {cuda_devices} CUDA device(s): "
                           "scaling needs two GPUs (or run it on the CPU)")
    setup = config.setups[0]
    epochs = min(EPOCHS, bench.recipe(setup).train.epochs)
    rounds = ROUNDS if config.mode == "full" else 1
    # Every block trains (no stop for stalled blocks): the comparison is block by block.
    overrides = (*(("threads=1",) if backend == "gloo" else ()), f"distributed.backend={backend}",
                 f"train.epochs={epochs}", "train.neuroflux.stop_stalled_blocks=false")
    recipe = bench.recipe(setup, config.ablation_budget, overrides)
    plan = bench.plan(recipe)
    train_samples = len(bench.data(recipe).train)
    global_batches = even_batches([b.batch_size for b in plan.blocks])
    folder = bench.scratch / "scaling"
    folder.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {str(w): [] for w in WORLD_SIZES}
    for round_ in range(rounds):
        seed = config.seed + round_
        for world in WORLD_SIZES if round_ % 2 == 0 else WORLD_SIZES[::-1]:
            job = folder / f"round{round_}-world{world}.json"
            job.write_text(json.dumps({"recipe": recipe_dict(recipe), "plan": _plan_for(plan, global_batches, world)
                                       .to_dict(), "seed": seed, "out": str(folder / f"round{round_}-world{world}")}))
            record = _launch(job, world, backend)
            result = record.pop("result")
            record["blocks"] = _block_figures(result, world, train_samples)
            record["best_exit_val_accuracy"] = max(result["exit_val_accuracy"], default=None)
            record["train_seconds"] = sum(b["train_seconds"] for b in record["blocks"])
            record["samples"] = sum(b["samples"] for b in record["blocks"])
            record["samples_per_second"] = record["samples"] / record["train_seconds"]
            record.update(world_size=world, seed=seed, round=round_)
            runs[str(world)].append(record)
    ratios = [two["samples_per_second"] / one["samples_per_second"] for one, two in zip(runs["1"], runs["2"])]
    block_ratios = [[b2["samples_per_second"] / b1["samples_per_second"]
                     for b1, b2 in zip(one["blocks"], two["blocks"])] for one, two in zip(runs["1"], runs["2"])]
    return {"setup": setup.name, "budget": config.ablation_budget, "backend": backend, "epochs": epochs,
            "rounds": rounds, "train_samples": train_samples, "val_samples": len(bench.data(recipe).monitor),
            "plan_batches": [b.batch_size for b in plan.blocks], "global_batches": global_batches,
            "runs": runs, "ratio": ratios, "block_ratio": block_ratios,
            "cuda_devices": cuda_devices}


def _range(values: list[float | None], fmt: str) -> str | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean = format(sum(values) / len(values), fmt)
    return mean if len(values) < 2 else f"{mean} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def render(result: dict[str, Any]) -> str:
    one, two = result["runs"]["1"], result["runs"]["2"]
    backend = result.get("backend", "gloo")  # results from before the CUDA variant ran gloo
    per_process = ("gloo, `threads: 1` and OMP_NUM_THREADS=1 per process" if backend == "gloo"
                   else f"{backend}, one GPU per process")
    out = [(f"**{result['setup']}** at the {result['budget']} budget, {result['train_samples']} training images, "
           f"{result['epochs']} epochs per block (fewer than the other comparisons, to keep the jobs short), "
           f"{result['rounds']} round(s) of a 1-process and a 2-process job, alternating which goes first. Each job is "
           "`python -m torch.distributed.run --standalone --nproc-per-node N -m benchmarks.scaling_worker JOB` "
           f"({per_process}), training the plan made once for one process "
           f"(blocks at {batches(result['plan_batches'])}) with every block at the same **global** batch "
           f"({batches(result['global_batches'])}, rounded down to even): one process at b, two at b/2 each on "
           "half the training set, so both take the same optimizer steps at the same learning rate. Samples/s = "
           "samples trained / the block's epoch seconds (steps and the per-epoch validation, both sharded); plan, "
           "process start, data loading and the caching pass are not in it. Accuracy: best validation accuracy "
           f"({result['val_samples']} images). Mean over rounds (min–max).\n")]
    rows = []
    for i, index in enumerate(b["index"] for b in one[0]["blocks"]):
        first, second = [r["blocks"][i] for r in one], [r["blocks"][i] for r in two]
        rows.append([f"block {index} (units {first[0]['units'][0]}–{first[0]['units'][-1]})",
                     f"{first[0]['global_batch']} = 1x{first[0]['per_rank_batch']} = 2x{second[0]['per_rank_batch']}",
                     _range([b["samples_per_second"] for b in first], ".0f"),
                     _range([b["samples_per_second"] for b in second], ".0f"),
                     _range([r[i] for r in result["block_ratio"]], ".2f"),
                     _range([b["best_val_accuracy"] for b in first], ".3f"),
                     _range([b["best_val_accuracy"] for b in second], ".3f")])
    rows.append(["all blocks", None, _range([r["samples_per_second"] for r in one], ".0f"),
                 _range([r["samples_per_second"] for r in two], ".0f"), _range(result["ratio"], ".2f"),
                 _range([r["best_exit_val_accuracy"] for r in one], ".3f"),
                 _range([r["best_exit_val_accuracy"] for r in two], ".3f")])
    out.append(table(["block", "global batch", "samples/s, 1 process", "samples/s, 2 processes", "2 / 1",
                      "val accuracy, 1 process", "val accuracy, 2 processes"], rows))
    jobs = []
    for world, records in (("1", one), ("2", two)):
        jobs.append([world, _range([r["train_seconds"] for r in records], ".1f"),
                     _range([r["job_wall_seconds"] for r in records], ".1f"),
                     _range([r["job_cpu_seconds"] for r in records], ".1f"),
                     _range([sum(r["rank_cpu_seconds"]) for r in records], ".1f"),
                     ", ".join(f"{r['load_before'][0]:.1f}→{r['load_after'][0]:.1f}" for r in records)])
    out.append(table(["processes", "training s (epochs)", "job wall s", "job CPU s (all processes)",
                      "train_model CPU s (ranks summed)", "load (1 min) before→after, per round"], jobs))
    if backend == "gloo":
        out.append(f"CUDA/NCCL: not measured. This run trained on the CPU, on a machine with "
                   f"{result.get('cuda_devices', 0)} CUDA device(s); `python -m benchmarks.run --device cuda --only "
                   "scaling` on a machine with two GPUs or more runs the same jobs with nccl, one GPU per process.\n")
    return "\n".join(out)


register_comparison(Comparison(
    name="scaling", title="Scaling: block training on 1 and 2 processes",
    question="Does block training get faster with two processes (torchrun, DDP) at the same global batch, "
             "and does it reach the same accuracy?", run=run, render=render))

