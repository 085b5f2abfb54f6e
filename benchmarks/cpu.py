"""CPU time of the processes a benchmark starts (torchrun jobs, whole builds in a subprocess)."""

from __future__ import annotations

import resource


def children_cpu_seconds() -> float:
    """User + system seconds of every finished child process so far: the difference around one
    `subprocess.run` is that run's CPU time (its own children included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
