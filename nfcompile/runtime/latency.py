"""Latency of runners: warm-up runs, then percentiles over timed runs, per batch size; and the machine's load.

This measures; it never judges. Callers (exit scoring, the build's deliverable timing, `nfcompile
bench`) compare the numbers with the recipe.

Several models are timed *interleaved*: the timed runs are split into rounds, and every round times
every model in turn (round-robin), so a burst of load from another process lands on all of them
alike instead of on whichever model happened to be timed then.
"""

from __future__ import annotations

import os
import time
from typing import Mapping

import numpy as np

from nfcompile.core.results import Latency, MachineLoad
from nfcompile.runtime.base import Runner

# Other processes together using this much of one core make a machine "loaded" for timing.
LOADED_CPU_PERCENT = 50.0
BUSY_PROCESS_PERCENT = 10.0  # a process is named as busy from this share of one core
LOAD_SAMPLE_SECONDS = 0.25
DEFAULT_ROUNDS = 5


def machine_load(sample_seconds: float = LOAD_SAMPLE_SECONDS) -> MachineLoad:
    """The load average and the other processes busy on this machine, sampled over ``sample_seconds``.

    psutil's per-process CPU percent needs two readings: the first primes every process, the second,
    ``sample_seconds`` later, gives its share of one core in between.
    """
    import psutil

    own = os.getpid()
    processes = []
    for process in psutil.process_iter(["pid", "name"]):
        if process.info["pid"] == own:
            continue
        try:
            process.cpu_percent(None)
            processes.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    time.sleep(sample_seconds)
    busy = []
    for process in processes:
        try:
            percent = process.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if percent >= BUSY_PROCESS_PERCENT:
            busy.append((percent, f"{process.info['name']} (pid {process.info['pid']}) {percent:.0f}% CPU"))
    busy.sort(reverse=True)
    other = float(sum(percent for percent, _ in busy))
    return MachineLoad(load_average=tuple(float(v) for v in os.getloadavg()), cpu_count=os.cpu_count() or 1,
                       busy=tuple(text for _, text in busy[:5]), other_cpu_percent=other,
                       loaded=other >= LOADED_CPU_PERCENT)


def measure_latency(runner: Runner, input_shape: tuple[int, ...], batch_sizes: tuple[int, ...], *,
                    warmup: int, repeats: int, seed: int = 0) -> tuple[Latency, ...]:
    """Time ``runner.infer`` on random inputs of each batch size (runner must be active)."""
    return measure_interleaved({"model": runner}, input_shape, batch_sizes, warmup=warmup, repeats=repeats,
                               rounds=1, seed=seed)["model"]


def measure_interleaved(runners: Mapping[str, Runner], input_shape: tuple[int, ...], batch_sizes: tuple[int, ...],
                        *, warmup: int, repeats: int, rounds: int = DEFAULT_ROUNDS,
                        seed: int = 0) -> dict[str, tuple[Latency, ...]]:
    """p50/p90 of ``repeats`` timed runs per runner and batch size, taken in ``rounds`` round-robin rounds.

    Every runner (all active) gets ``warmup`` untimed runs per batch size first. Each round then
    times every runner in turn, ``repeats / rounds`` runs per batch size (the remainder goes to the
    first rounds). All runners see the same random inputs.
    """
    rng = np.random.default_rng(seed)
    rounds = max(1, min(rounds, repeats))
    feeds = {batch: rng.standard_normal((batch, *input_shape), dtype=np.float32) for batch in batch_sizes}
    names = {key: runner.input_names[0] for key, runner in runners.items()}
    for key, runner in runners.items():
        for batch in batch_sizes:
            for _ in range(warmup):
                runner.infer({names[key]: feeds[batch]})
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    times: dict[tuple[str, int], list[float]] = {(key, batch): [] for key in runners for batch in batch_sizes}
    for count in per_round:
        for key, runner in runners.items():
            for batch in batch_sizes:
                feed = {names[key]: feeds[batch]}
                for _ in range(count):
                    start = time.perf_counter()
                    runner.infer(feed)
                    times[key, batch].append(time.perf_counter() - start)
    return {key: tuple(_latency(batch, np.asarray(times[key, batch]) * 1e3, warmup) for batch in batch_sizes)
            for key in runners}


def _latency(batch: int, times_ms: np.ndarray, warmup: int) -> Latency:
    return Latency(batch_size=batch, p50_ms=float(np.percentile(times_ms, 50)),
                   p90_ms=float(np.percentile(times_ms, 90)), mean_ms=float(times_ms.mean()),
                   runs=len(times_ms), warmup=warmup)


def latency_spread_ms(latency: Latency) -> float:
    """The measured spread of one latency: p90 - p50 of its timed runs."""
    return max(0.0, latency.p90_ms - latency.p50_ms)
