"""What the whole-block memory meter costs: training with it on against a null meter, interleaved.

    python -m benchmarks.meter_overhead [--rounds 4] [--recipe recipes/quickstart.yaml]

One process trains the recipe (`nfcompile.train`, TensorBoard off) once as a warm-up, then in every
round once with `core.memory.BlockMeter` as shipped and once with a meter that measures nothing,
alternating which goes first. The null meter is swapped in here, not offered as a recipe option: the
budget promise needs the meter on every real run. Per run it records the blocks' training seconds
(what the meter is active over), the wall and CPU time of the call and the load; the ratio on / off is
paired within each round. Writes `benchmarks/results/<date>-meter-overhead.json` (`-2`, `-3`... when taken).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.results import RESULTS_DIR, unused_path
from nfcompile.core.io import write_json
from nfcompile.core.results import METER_SCAN

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.meter_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)

    import nfcompile
    from nfcompile.core import memory

    shipped = memory.BlockMeter.__enter__, memory.BlockMeter.__exit__

    def null_exit(meter: memory.BlockMeter, *exc_info: object) -> None:
        meter.reading = memory.BlockMemory(0, {}, None, "null meter (benchmarks.meter_overhead)")

    def train(meter: str, folder: str) -> dict:
        memory.BlockMeter.__enter__, memory.BlockMeter.__exit__ = (
            shipped if meter == "on" else (lambda self: self, null_exit))
        load, cpu, started = os.getloadavg()[0], time.process_time(), time.perf_counter()
        try:
            trained = nfcompile.train(REPO / args.recipe, ["log.tensorboard=false"], out_dir=folder)
        finally:
            memory.BlockMeter.__enter__, memory.BlockMeter.__exit__ = shipped
        # A block's seconds leave out the meter's scan before it: counted here, it is part of the meter's cost.
        return {"meter": meter, "block_seconds": sum(b.seconds + b.time_spent.get(METER_SCAN, 0.0)
                                                     for b in trained.train.blocks),
                "wall_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
                "load_before": load}

    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="nfcompile-meter-overhead-") as folder:
        train("on", folder)  # warm-up: imports and first-use allocations, discarded
        for round_ in range(args.rounds):
            for meter in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                runs.append({"round": round_ + 1, **train(meter, folder)})
                print(runs[-1], file=sys.stderr, flush=True)
    ratios = []
    for round_ in range(1, args.rounds + 1):
        on, off = (next(r for r in runs if r["round"] == round_ and r["meter"] == m) for m in ("on", "off"))
        ratios.append({"round": round_, "block_seconds": on["block_seconds"] / off["block_seconds"],
                       "cpu_seconds": on["cpu_seconds"] / off["cpu_seconds"]})
    started = datetime.now(timezone.utc)
    document = {"format": "nfcompile.meter_overhead/1", "recipe": args.recipe, "cpu_count": os.cpu_count(),
                "date": started.isoformat(timespec="seconds"),
                "command": " ".join(["python -m benchmarks.meter_overhead", *(argv or sys.argv[1:])]),
                "runs": runs, "ratio_on_off": ratios}
    path = write_json(unused_path(RESULTS_DIR, f"{started:%Y-%m-%d}-meter-overhead"), document)
    print(path)
    for ratio in ratios:
        print(f"round {ratio['round']}: training seconds on/off {ratio['block_seconds']:.2f}x, "
              f"CPU {ratio['cpu_seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
