"""One rank of the `scaling` comparison's torchrun jobs (benchmarks/comparisons/scaling.py).

    python -m torch.distributed.run --standalone --nproc-per-node N -m benchmarks.scaling_worker JOB.json

Trains JOB's plan as `nfcompile build`'s train stage does (`distributed_job`, then `train_model`); rank 0
writes JOB.out.json. A module of its own: run from inside `benchmarks.comparisons` it would import the
whole suite and register its comparison twice.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def main(job_path: Path) -> None:
    """One rank of a torchrun job: train the job's plan as the pipeline's train stage does; rank 0 writes
    the result, with every rank's wall and CPU time of `train_model`."""
    import torch

    from nfcompile.core import distributed as dist
    from nfcompile.core.device import resolve_device
    from nfcompile.core.repro import seed_everything
    from nfcompile.core.results import Plan
    from nfcompile.data import load_data
    from nfcompile.models import build_unit_net
    from nfcompile.pipeline import distributed_job
    from nfcompile.recipe.load import validate_recipe
    from nfcompile.stages.train import train_model

    job = json.loads(job_path.read_text())
    recipe = validate_recipe(job["recipe"], source=str(job_path))
    plan = Plan.from_dict(job["plan"], source=str(job_path))
    torch.set_num_threads(1)
    with distributed_job(recipe):
        device = dist.local_device(resolve_device(recipe.device))
        data = load_data(recipe.data, recipe.seed)
        seed_everything(job["seed"])
        unit_net = build_unit_net(recipe.model, recipe.model.num_classes or data.info.num_classes)
        out_dir = Path(job["out"]) / f"rank{dist.rank()}"
        usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        outcome = train_model(unit_net, plan, data, model=recipe.model, train=recipe.train,
                              augment=recipe.data.augment, budget=recipe.budget, device=device, seed=job["seed"],
                              out_dir=out_dir, resume=False, fingerprint="benchmarks-scaling")
        after = resource.getrusage(resource.RUSAGE_SELF)
        mine = {"wall": time.perf_counter() - wall,
                "cpu": after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime}
        ranks = dist.gather_objects(mine)
        if dist.is_main():
            result = outcome.result.to_dict()
            # Per-rank shards and digests are long (tests/distributed checks them); keep their verdict.
            ranks_record = result.get("details", {}).pop("distributed", None)
            job_path.with_suffix(".out.json").write_text(json.dumps({
                "result": result, "weights_identical": ranks_record and ranks_record["weights_identical"],
                "rank_wall_seconds": [r["wall"] for r in ranks],
                "rank_cpu_seconds": [r["cpu"] for r in ranks], "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
