"""The process group: the one place that knows torch.distributed.

A run is distributed when `torchrun` (or `nfcompile build --nproc N`, which starts the same through
`torch.distributed.run`) launched it: WORLD_SIZE, RANK and LOCAL_RANK are in the environment. Not
launched so, every helper here is a no-op on one process (rank 0 of a world of 1), and nothing
touches torch.distributed at all: single-process runs stay exactly what they were.

Backends: gloo on CPU, nccl on CUDA (``auto``). One process per device: LOCAL_RANK picks the GPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch

from nfcompile.errors import InputError

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def launched() -> bool:
    """True when torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True when a process group is up (a distributed run past its start)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


def is_main() -> bool:
    """Rank 0: the process that scores, exports and writes the bundle."""
    return rank() == 0


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    return backend


def local_device(device: torch.device) -> torch.device:
    """One process per device: under torchrun a CUDA device becomes the one LOCAL_RANK names, or the only
    one a rank sees where CUDA_VISIBLE_DEVICES shows each rank one GPU (set per rank: one setting for all
    would put every rank on the same GPU, which nothing here can see)."""
    if device.type != "cuda" or not launched():
        return device
    visible = torch.cuda.device_count()
    if visible == 1 and os.environ.get("CUDA_VISIBLE_DEVICES"):
        return torch.device("cuda", 0)
    if local_rank() >= visible:
        raise InputError(f"device {device}: LOCAL_RANK {local_rank()} but this process sees {visible} CUDA "
                         "device(s); run at most one process per GPU (torchrun --nproc-per-node)")
    return torch.device("cuda", local_rank())


@contextlib.contextmanager
def process_group(backend: str, device: torch.device, timeout_minutes: float) -> Iterator[None]:
    """Join the job's process group for the duration (when launched by torchrun; else nothing).

    ``timeout_minutes`` bounds every collective: ranks other than 0 wait in one while rank 0 scores
    and exports, so it must cover those stages. A rank that dies is noticed by torchrun at once
    (it stops the others), not by this timeout.
    """
    if not launched() or active():
        yield
        return
    chosen = resolve_backend(backend, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {"device_id": device} if chosen == "nccl" else {}
    torch.distributed.init_process_group(chosen, timeout=timedelta(minutes=timeout_minutes), **kwargs)
    if rank() != 0:
        # One voice: rank 0 logs and draws progress; the others report warnings and errors only.
        logging.getLogger("nfcompile").setLevel(logging.WARNING)
        from nfcompile.core import log as log_module

        log_module.disable_progress()
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def backend_name() -> str | None:
    return str(torch.distributed.get_backend()) if active() else None


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; for plans, messages and small states)."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks, in float64 (integer counts stay exact); the same on every rank."""
    if not active():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return [float(v) for v in tensor.cpu()]


def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values."""
    if not active():
        return
    device = _collective_device()
    with torch.no_grad():
        for tensor in tensors:
            moved = tensor.detach().to(device)
            torch.distributed.broadcast(moved, src=src)
            if moved.data_ptr() != tensor.data_ptr():
                tensor.copy_(moved)


def _collective_device() -> torch.device:
    """nccl moves CUDA tensors only; gloo takes host tensors."""
    if backend_name() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launch_local(nproc: int, module_args: Sequence[str]) -> int:
    """Start ``python -m nfcompile <module_args>`` as ``nproc`` processes on this machine through
    torch.distributed.run (standalone rendezvous: a free local port). Returns the exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "nfcompile",
                                         *module_args])
    try:
        run(args)
    except ChildFailedError as failed:
        first = failed.get_first_failure()[1]
        how = (f"was killed by {signal.Signals(-first.exitcode).name}" if first.exitcode < 0
               else f"exited with code {first.exitcode}")
        logging.getLogger("nfcompile").error("rank %d (pid %d) %s: the job was stopped",
                                             first.local_rank, first.pid, how)
        return 1
    return 0
