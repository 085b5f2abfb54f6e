"""Latency of a runner: warm-up runs, then percentiles over timed runs, per batch size.

This measures; it never judges. Callers (exit scoring, `nfcompile bench`) compare the numbers
with the recipe.
"""

from __future__ import annotations

import time

import numpy as np

from nfcompile.core.results import Latency
from nfcompile.runtime.base import Runner


def measure_latency(runner: Runner, input_shape: tuple[int, ...], batch_sizes: tuple[int, ...], *,
                    warmup: int, repeats: int, seed: int = 0) -> tuple[Latency, ...]:
    """Time ``runner.infer`` on random inputs of each batch size (runner must be active)."""
    rng = np.random.default_rng(seed)
    name = runner.input_names[0]
    results = []
    for batch in batch_sizes:
        feed = {name: rng.standard_normal((batch, *input_shape), dtype=np.float32)}
        for _ in range(warmup):
            runner.infer(feed)
        times = np.empty(repeats)
        for i in range(repeats):
            start = time.perf_counter()
            runner.infer(feed)
            times[i] = time.perf_counter() - start
        times_ms = times * 1e3
        results.append(Latency(batch_size=batch, p50_ms=float(np.percentile(times_ms, 50)),
                               p90_ms=float(np.percentile(times_ms, 90)), mean_ms=float(times_ms.mean()),
                               runs=repeats, warmup=warmup))
    return tuple(results)
