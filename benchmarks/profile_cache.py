"""Reused step profiles: quickstart builds with an empty profile cache and with a warm one, interleaved.

    python -m benchmarks.profile_cache [--rounds 2] [--recipe recipes/quickstart.yaml]

A first build of a recipe measures every unit's, block's and backprop baseline's training step; a
later build of the same model on the same machine reads them back (`train.neuroflux.reuse_profiles`).
Each round builds the recipe twice with this tree, each in its own process (which goes first
alternates between rounds): once with an empty profile cache (what a first build, or a CI machine
without a kept cache, does) and once with a cache an untimed build filled beforehand. Per build:
every stage's seconds, wall and CPU time, the load before and after
(`benchmarks.before_after.timed_build`). Writes
`benchmarks/results/<date>-profile-cache.json` (`-2`, `-3`... when taken) and prints plan / train.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.before_after import REPO, timed_build
from benchmarks.results import RESULTS_DIR, machine_fingerprint, unused_path
from nfcompile.core.io import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_cache", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="nfcompile-profile-cache-") as folder:
        warm = Path(folder) / "warm-cache"
        print("filling the warm cache (untimed build)", file=sys.stderr, flush=True)
        filled = timed_build(REPO, args.recipe, Path(folder) / "fill", profile_cache=warm)
        if filled["exit_code"] != 0:
            print(f"error: the build that fills the cache failed: {filled.get('error')}", file=sys.stderr)
            return 1
        for round_ in range(args.rounds):
            contenders = (("empty cache", None), ("warm cache", warm))
            for label, cache in contenders if round_ % 2 == 0 else contenders[::-1]:  # who goes first alternates
                print(f"round {round_ + 1}: {label}", file=sys.stderr, flush=True)
                entry = timed_build(REPO, args.recipe, Path(folder) / f"out-{round_}-{label.split()[0]}",
                                    profile_cache=cache)
                runs.append({"round": round_ + 1, "profiles": label, **entry})
    document = {"format": "nfcompile.profile_cache/1", "recipe": args.recipe,
                "date": started.isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
                "machine": machine_fingerprint(torch.device("cpu")),
                "command": " ".join(["python -m benchmarks.profile_cache", *(argv or sys.argv[1:])]), "runs": runs}
    path = write_json(unused_path(RESULTS_DIR, f"{started:%Y-%m-%d}-profile-cache"), document)
    print(path)
    for label in ("empty cache", "warm cache"):
        done = [run for run in runs if run["profiles"] == label and run["exit_code"] == 0]
        if not done:
            print(f"{label}: no build finished")
            continue
        plan = [run["stages"]["plan"]["seconds"] for run in done]
        train = [run["stages"]["train"]["seconds"] for run in done]
        shares = [p / t for p, t in zip(plan, train)]
        print(f"{label}: plan {statistics.median(plan):.1f} s, train {statistics.median(train):.1f} s, plan / train "
              f"{min(shares):.0%}-{max(shares):.0%}; build {statistics.median(r['wall_seconds'] for r in done):.1f} s "
              f"wall, {statistics.median(r['cpu_seconds'] for r in done):.1f} s CPU")
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
