"""A build on a shared CPU: the thread policy measured on a quiet machine and beside one busy process.

Each contender is `nfcompile train` on the quickstart recipe (fewer epochs) in a process of its own,
because OpenMP's wait policy is fixed when a process loads it:

- ``spin, all cores``: torch's default thread count with OpenMP spinning while it waits (OMP_WAIT_POLICY
  ACTIVE), what the tool did before it set its own policy;
- ``passive, all cores``: the same threads, waiting passively (the tool's default wait policy);
- ``auto``: the tool's default (``threads: auto``: the cores no other process keeps busy, passive).

Rounds alternate quiet and loaded (one other process spinning on one core) and rotate the contenders,
so drift in the machine's load falls on each alike. Wall and CPU seconds of every run go to
``benchmarks/results/shared-cpu-<date>.json``; the summary gives loaded/quiet ratios per contender.

    python -m benchmarks.shared_cpu [--rounds 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

from benchmarks.cpu import children_cpu_seconds
from benchmarks.results import RESULTS_DIR, unused_path
from nfcompile.core.io import write_json

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = {
    "spin, all cores": ({"OMP_WAIT_POLICY": "ACTIVE"}, f"threads={os.cpu_count() or 1}"),
    "passive, all cores": ({"OMP_WAIT_POLICY": "PASSIVE"}, f"threads={os.cpu_count() or 1}"),
    "auto": ({"OMP_WAIT_POLICY": "PASSIVE"}, "threads=auto"),
}


def _spin(stop) -> None:  # the other busy process: one core, pure Python
    while not stop.is_set():
        sum(range(10_000))


def _run(env: dict[str, str], threads: str, epochs: int, out: Path) -> dict[str, float]:
    before, started = children_cpu_seconds(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "nfcompile", "-q", "train", str(REPO / "recipes" / "quickstart.yaml"),
                    "--out", str(out), "--set", f"train.epochs={epochs}", "--set", threads],
                   env={**os.environ, **env}, check=True, capture_output=True, cwd=REPO)
    wall = time.perf_counter() - started
    return {"wall_seconds": wall, "cpu_seconds": children_cpu_seconds() - before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    runs: list[dict] = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        names = list(CONTENDERS)
        for round_ in range(args.rounds):
            for loaded in (False, True) if round_ % 2 == 0 else (True, False):
                stop = multiprocessing.Event()
                spinner = multiprocessing.Process(target=_spin, args=(stop,)) if loaded else None
                if spinner:
                    spinner.start()
                try:
                    shift = round_ % len(names)
                    for name in names[shift:] + names[:shift]:
                        env, threads = CONTENDERS[name]
                        figures = _run(env, threads, args.epochs, Path(scratch) / f"{round_}-{loaded}")
                        runs.append({"contender": name, "loaded": loaded, "round": round_, **figures})
                        print(f"round {round_} {'loaded' if loaded else 'quiet '} {name:20} "
                              f"{figures['wall_seconds']:6.1f} s wall {figures['cpu_seconds']:6.1f} s CPU", flush=True)
                finally:
                    if spinner:
                        stop.set()
                        spinner.join()
    summary = {}
    for name in CONTENDERS:
        quiet = median(r["wall_seconds"] for r in runs if r["contender"] == name and not r["loaded"])
        busy = median(r["wall_seconds"] for r in runs if r["contender"] == name and r["loaded"])
        summary[name] = {"quiet_wall_median": quiet, "loaded_wall_median": busy, "loaded_over_quiet": busy / quiet}
    document = {"command": "python -m benchmarks.shared_cpu " + " ".join(argv or sys.argv[1:]),
                "finished": datetime.now(timezone.utc).isoformat(), "cpu_count": os.cpu_count(),
                "load_average_start": load_start, "load_average_end": os.getloadavg(),
                "epochs": args.epochs, "runs": runs, "summary": summary}
    path = write_json(unused_path(args.results_dir, f"shared-cpu-{datetime.now():%Y-%m-%d}"), document)
    for name, figures in summary.items():
        print(f"{name:20} quiet {figures['quiet_wall_median']:6.1f} s, beside a busy process "
              f"{figures['loaded_wall_median']:6.1f} s ({figures['loaded_over_quiet']:.2f}x)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
