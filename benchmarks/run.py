"""Run the benchmark suite: `python -m benchmarks.run [--quick] [--only NAME ...]`.

Runs the registered comparisons in order on one workbench, writes
`benchmarks/results/<date>-<machine>.json` and regenerates `benchmarks/RESULTS.md` from it. A
comparison that fails is recorded as failed (with its error) and the others still run; the exit
code is then 1. Nothing here judges a timing: the suite measures and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch
from threadpoolctl import threadpool_limits

from nfcompile.core.io import to_jsonable, write_text
from nfcompile.core.log import get_logger, setup_logging
from nfcompile.recipe import recipe_dict

from benchmarks.config import SuiteConfig, full_config, quick_config
from benchmarks.registry import Comparison, list_comparisons
from benchmarks.report import RESULTS_MD, render_results, shown_path
from benchmarks.results import (RESULTS_DIR, machine_fingerprint, machine_slug, results_document, results_path,
                                write_results)
from benchmarks.workbench import Workbench

log = get_logger("nfcompile.benchmarks")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    names = [c.name for c in list_comparisons()]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, two budgets, shorter schedules (~23 min)")
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"run only these: {', '.join(names)}")
    parser.add_argument("--list", action="store_true", help="list the comparisons and exit")
    parser.add_argument("--repeats", type=int, help="repeats per comparison (default: 1 on Fashion-MNIST, pruning 2; "
                        "3 and 5 on the digits fallback; 1 with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--cifar-root", type=Path, default=Path("data"),
                        help="folder holding cifar-10-batches-py/; CIFAR-10 is skipped with a note where absent")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the results JSON goes")
    parser.add_argument("--results-md", type=Path, default=RESULTS_MD, help="the RESULTS.md to regenerate")
    parser.add_argument("--no-render", action="store_true", help="write the JSON only, leave RESULTS.md alone")
    parser.add_argument("-v", "--verbose", action="store_true", help="also show the engine's own log")
    return parser.parse_args(argv)


def run_suite(config: SuiteConfig, comparisons: Sequence[Comparison], *, command: str, results_dir: Path,
              results_md: Path | None, scratch: Path | None = None) -> tuple[Path, dict]:
    """Run ``comparisons`` under ``config``; write the results JSON (and RESULTS.md unless None).
    Returns the JSON's path and the document."""
    started = datetime.now(timezone.utc)
    threads = torch.get_num_threads()  # the workbench sets the suite's own; the caller's comes back after
    with blas_threads(config.threads), tempfile.TemporaryDirectory(prefix="nfcompile-bench-", dir=scratch) as folder:
        try:
            bench = Workbench(config, Path(folder))
            document = _run_all(bench, comparisons, command=command, started=started)
        finally:
            torch.set_num_threads(threads)
    path = results_path(results_dir, started, machine_slug(document["machine"]), config.mode)
    write_results(document, path)
    log.info("results: %s", path)
    if results_md is not None:
        write_text(results_md, render_results(document, shown_path(path, results_md)))
        log.info("regenerated %s", results_md)
    return path, document


def blas_threads(threads: int | None) -> contextlib.AbstractContextManager:
    """NumPy's BLAS (scikit-learn's linear probes in comparison 10) keeps thread pools of its own, which
    torch's thread count does not reach: the suite's count holds there too (None: the libraries' own)."""
    return threadpool_limits(threads) if threads is not None else contextlib.nullcontext()


def _run_all(bench: Workbench, comparisons: Sequence[Comparison], *, command: str, started: datetime) -> dict:
    machine = machine_fingerprint(bench.device)
    outcomes = []
    for index, comparison in enumerate(comparisons, start=1):
        log.info("[%d/%d] %s", index, len(comparisons), comparison.title)
        outcomes.append(_run_one(comparison, bench))
    machine["load_average_end"] = list(os.getloadavg())
    return results_document(
        command=command, started=started, finished=datetime.now(timezone.utc), machine=machine,
        config=to_jsonable(bench.config), setups=[_setup_entry(bench, setup) for setup in _setups_shown(bench)],
        comparisons=outcomes, plans=bench.plans_made)


def _run_one(comparison: Comparison, bench: Workbench) -> dict:
    started = time.perf_counter()
    try:
        result = to_jsonable(comparison.run(bench))
        status, reason = "ok", ""
    except Exception as exc:  # recorded, reported, and the other comparisons still run
        log.error("%s failed: %s", comparison.name, traceback.format_exc())
        result, status, reason = None, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
    return {"name": comparison.name, "title": comparison.title, "question": comparison.question,
            "status": status, "reason": reason, "seconds": time.perf_counter() - started, "result": result}


def _setups_shown(bench: Workbench) -> list:
    """The suite's setups, then any other a comparison trained on (the methods' setup)."""
    shown = {setup.name: setup for setup in bench.config.setups}
    for name, setup in list(bench.setups_used.items()):
        shown.setdefault(name, setup)
    return list(shown.values())


def _setup_entry(bench: Workbench, setup) -> dict:
    recipe = bench.recipe(setup)
    data = bench.data(recipe)
    return {"name": setup.name, "overrides": list(setup.overrides), "recipe": recipe_dict(recipe),
            "samples": {"train": len(data.train), "val": len(data.val), "monitor": len(data.monitor),
                        "test": len(data.test)},
            "budgets": bench.measured_budgets.get(setup.name, {})}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.list:
        for comparison in list_comparisons():
            print(f"{comparison.name:22} {comparison.question}")
        return 0
    setup_logging(verbose=0, quiet=not args.verbose)
    logging.getLogger("nfcompile.benchmarks").setLevel(logging.INFO)
    make = quick_config if args.quick else full_config
    config = make(device=args.device, cifar_root=args.cifar_root)
    if args.repeats is not None:
        if args.repeats < 1:
            print("--repeats must be at least 1", file=sys.stderr)
            return 2
        config = replace(config, repeats=args.repeats, pruning_repeats=args.repeats)
    for name, why in config.skipped:
        log.info("skipping %s: %s", name, why)
    chosen = [c for c in list_comparisons() if not args.only or c.name in args.only]
    command = shlex.join(["python", "-m", "benchmarks.run", *argv])
    _, document = run_suite(config, chosen, command=command, results_dir=args.results_dir,
                            results_md=None if args.no_render else args.results_md)
    failed = [outcome["name"] for outcome in document["comparisons"] if outcome["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
