"""Comparison 5, before and after: the quickstart build of an earlier revision and of this tree, interleaved.

    python -m benchmarks.before_after --before REV [--rounds 1] [--recipe recipes/quickstart.yaml]

Each round builds the recipe once with the code of ``REV`` (a `git worktree` of it in a temporary
folder) and once with this working tree, one after the other (which goes first alternates between
rounds), each in its own process with the same interpreter and an empty profile cache (every build
measures its profiles, as a first build does). Per build it records every stage's seconds (from the
bundle's manifest), the wall time, the CPU time of the process (user + system, from
`resource.getrusage` of the children), the machine's load before and after, and how many step
profiles the plan measured and reused. Writes `benchmarks/results/<date>-quickstart-before-after.json`
(`-2`, `-3`... when taken); `benchmarks.comparisons.pipeline_overhead` renders the newest one into
comparison 5.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.cpu import children_cpu_seconds
from benchmarks.results import RESULTS_DIR, machine_fingerprint, unused_path
from nfcompile.core.io import read_json, write_json

REPO = Path(__file__).resolve().parents[1]
NAME = "quickstart-before-after"  # files: <date>-NAME.json, then <date>-NAME-2.json, ...


def timed_build(tree: Path, recipe: str, out: Path, *, profile_cache: Path | None = None) -> dict:
    """Build ``recipe`` with the code in ``tree`` in its own process: its stages' seconds, wall and CPU time.

    ``profile_cache``: the folder of reused step profiles (`train.neuroflux.reuse_profiles`); None gives
    the build a fresh empty one, so it measures every profile as a first build does."""
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="nfcompile-profiles-") as fresh:
        env = {**os.environ, "NFCOMPILE_CACHE_DIR": str(profile_cache or fresh)}
        cpu_before, started = children_cpu_seconds(), time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "nfcompile", "-q", "build", recipe, "--out", str(out)],
                              cwd=tree, capture_output=True, text=True, env=env)
        wall, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu_before
    entry = {"exit_code": done.returncode, "wall_seconds": wall, "cpu_seconds": cpu,
             "load_average_before": load_before, "load_average_after": list(os.getloadavg())}
    manifests = sorted(out.glob("*/*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if done.returncode != 0 or not manifests:
        entry["error"] = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no bundle"]
        return entry
    manifest = read_json(manifests[-1])
    entry["stages"] = {s["name"]: {"status": s["status"], "seconds": s["seconds"]} for s in manifest["stages"]}
    plan = manifests[-1].parent / "state" / "plan.json"
    if plan.is_file():  # revisions before profile reuse record neither count
        result = read_json(plan).get("result") or {}
        entry["step_profiles"] = {k: result[f"profiles_{k}"] for k in ("measured", "reused")
                                  if f"profiles_{k}" in result}
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.before_after", description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    revision = subprocess.run(["git", "rev-parse", args.before], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    after = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="nfcompile-before-after-") as folder:
        worktree = Path(folder) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), revision], cwd=REPO,
                       capture_output=True, check=True)
        try:
            for round_ in range(args.rounds):
                contenders = (("before", worktree), ("after", REPO))
                # Alternate which goes first: a build right after another can run slower or faster
                # (a neighbour's load, the page cache), and that must not land on one side only.
                for label, tree in contenders if round_ % 2 == 0 else contenders[::-1]:
                    print(f"round {round_ + 1}: {label}", file=sys.stderr, flush=True)
                    entry = timed_build(tree, args.recipe, Path(folder) / f"out-{label}-{round_}")
                    runs.append({"round": round_ + 1, "code": label, **entry})
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, capture_output=True)
    started = datetime.now(timezone.utc)
    document = {"format": "nfcompile.before_after/1", "recipe": args.recipe, "before": revision, "after": after,
                "after_dirty": dirty, "date": started.isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
                "machine": machine_fingerprint(torch.device("cpu")),
                "command": " ".join(["python -m benchmarks.before_after", *(argv or sys.argv[1:])]), "runs": runs}
    path = write_json(unused_path(RESULTS_DIR, f"{started:%Y-%m-%d}-{NAME}"), document)
    print(path)
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
