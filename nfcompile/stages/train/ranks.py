"""What a distributed training run records about its ranks, gathered onto rank 0.

Per rank: its host and device, the measured peak of every block (the budget is per process, so
each rank's peak is judged against it on that rank), a digest of its weights after every block
(equal on every rank: DDP kept them in step), and the global training indices it actually fetched
to train on, as arithmetic progressions ``[start, stop, step]`` (an interleaved shard is one).
"""

from __future__ import annotations

import socket
from dataclasses import replace

import torch

from nfcompile.core import distributed as dist
from nfcompile.core.results import TrainResult
from nfcompile.learning.parallel import trained_indices
from nfcompile.stages.train.checkpoint import block_digests


def progressions(indices: torch.Tensor) -> list[list[int]]:
    """Sorted unique ``indices`` as maximal runs ``[start, stop, step]`` (``range(start, stop, step)``)."""
    values = [int(v) for v in indices.tolist()]
    runs: list[list[int]] = []
    i = 0
    while i < len(values):
        if i + 1 == len(values):
            runs.append([values[i], values[i] + 1, 1])
            break
        step = values[i + 1] - values[i]
        j = i + 1
        while j + 1 < len(values) and values[j + 1] - values[j] == step:
            j += 1
        runs.append([values[i], values[j] + 1, step])
        i = j + 1
    return runs


def expand(runs: list[list[int]]) -> list[int]:
    return [v for start, stop, step in runs for v in range(start, stop, step)]


def with_ranks(result: TrainResult, device: torch.device) -> TrainResult:
    """``result`` with ``details["distributed"]``: world size, backend and every rank's record."""
    mine = {"rank": dist.rank(), "host": socket.gethostname(), "device": str(device),
            "block_peak_bytes": [b.measured_peak_bytes for b in result.blocks],
            "block_rss_rise_bytes": [b.rss_rise_bytes for b in result.blocks],
            "block_digests": block_digests(),
            "trained_indices": {str(n): progressions(idx) for n, idx in trained_indices().items()}}
    ranks = dist.gather_objects(mine)
    digests = [r["block_digests"] for r in ranks]
    summary = {"world_size": dist.world_size(), "backend": dist.backend_name(),
               "weights_identical": all(d == digests[0] for d in digests), "ranks": ranks}
    return replace(result, details={**result.details, "distributed": summary})
