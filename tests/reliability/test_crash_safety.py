"""Kill -9 at random points, then --resume: the bundle comes out as an uninterrupted build makes it,
and no file is ever seen half-written.

The kill points are drawn from a seeded generator (set NFCOMPILE_CRASH_SEED to replay or vary them):
for each phase, a file that only exists once the phase is under way (a stage record, a block
checkpoint, a disk cache, an atomic write's temporary file, a chart of the bundle) and a short
delay after it appears. After every kill each visible file of the run folder must be complete; a
hidden temporary file may remain, and the next run in the folder removes it.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from nfcompile.core.io import load_checkpoint, remove_scratch
from nfcompile.pipeline import STAGE_NAMES
from nfcompile.runs import PARTIAL_SUFFIX, STATE_DIR
from nfcompile.runtime.onnx_io import onnx_graph_signature
from nfcompile.stages.bundle import verify_bundle

from reliability.helpers import RECIPE_NAME, run_folders, start_cli

SEED = int(os.environ.get("NFCOMPILE_CRASH_SEED", "20"))  # 20: mid-cache, mid-ONNX-write, mid-bundle
POLL = 0.002

# Hidden names a killed process may leave: an atomic write's temporary file, the quantizer's work
# folder, a disk cache of activations, a block's best-epoch weights (CPU keeps them in a file).
SCRATCH = re.compile(r"^\.(.+\.[0-9a-z_]+\.tmp|quantize-.*|block\d+\.(train|val)\.float(16|32)\.bin"
                     r"|snapshot-[0-9a-f]+\.pt)$")
LOCK = ".lock"  # the run's lock file: released by the kernel when its holder dies, reused by the next


def _complete(path: Path) -> None:
    """Raise unless ``path`` is a whole file of its kind."""
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".onnx":
        onnx.checker.check_model(onnx.load(str(path)))
    elif suffix == ".pt":
        load_checkpoint(path)
    elif suffix == ".npy":
        np.load(path, allow_pickle=False)
    elif suffix == ".png":
        with Image.open(path) as image:
            image.verify()
    elif suffix == ".md":  # the report: its last section, closed
        text = path.read_text(encoding="utf-8")
        assert "## Reproduce" in text and text.endswith("```\n")
    elif path.name.startswith("events.out.tfevents."):
        # TensorBoard's append-only log of CRC-checked records: a kill can cut only its last record,
        # which readers skip. Every record before it must read back.
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        assert any(True for _ in EventFileLoader(str(path)).Load())
    elif suffix in (".engine", ".cache"):  # TensorRT's, where it is installed: opaque, written in one piece
        assert path.stat().st_size > 0
    else:
        raise AssertionError(f"a file nobody checks for completeness: {path}")


def _inspect(run: Path) -> list[str]:
    """Check every file of a run folder: visible ones complete, hidden ones only known scratch.
    Returns the scratch found (relative paths)."""
    scratch = []
    for parent, dirs, names in os.walk(run):
        for name in [*names, *dirs]:
            path = Path(parent) / name
            relative = path.relative_to(run).as_posix()
            if relative == LOCK:
                continue
            if any(part.startswith(".") for part in Path(relative).parts):
                if name.startswith("."):
                    assert SCRATCH.match(name), f"unexpected hidden entry {relative}"
                    scratch.append(relative)
            elif path.is_file():
                try:
                    _complete(path)
                except Exception as exc:
                    raise AssertionError(f"{relative} is not a complete file after the kill: {exc}") from exc
    return scratch


@dataclass(frozen=True)
class KillPoint:
    phase: str
    trigger: str  # glob under the run folder; the kill comes `delay` seconds after a match appears
    delay: float
    stages: tuple[str, ...]  # the stages that may be running when the kill lands


def kill_points(rng: random.Random) -> list[KillPoint]:
    training = rng.choice(["state/plan.json", "checkpoint/checkpoint.pt", "checkpoint/cache/.block0.train.*.bin"])
    export = rng.choice(["state/prune.json", ".model.onnx.*.tmp", "model.onnx", ".quantize-*", "model.int8.onnx"])
    bundle = rng.choice(["state/validate_engine.json", "plan.png", "training.png", "validation/inputs.npy",
                         "validation/pytorch.npy"])
    after_select = tuple(STAGE_NAMES[STAGE_NAMES.index("export"):STAGE_NAMES.index("bundle")])
    return [KillPoint("training", training, rng.uniform(0.0, 0.5), ("train",)),
            KillPoint("export", export, rng.uniform(0.0, 0.05), after_select),
            KillPoint("bundle", bundle, rng.uniform(0.0, 0.02), ("bundle",))]


def _new_match(out: Path, trigger: str, since_ns: int) -> Path | None:
    for run in (out / RECIPE_NAME).glob(f"*{PARTIAL_SUFFIX}"):
        for path in run.glob(trigger):
            try:
                if path.stat().st_mtime_ns >= since_ns:
                    return run
            except FileNotFoundError:  # a temporary file renamed away meanwhile
                continue
    return None


def _running_stage(run: Path) -> str:
    """The first stage without a record: the one the process was in (the bundle stage keeps none)."""
    return next(name for name in STAGE_NAMES if not (run / STATE_DIR / f"{name}.json").is_file() or name == "bundle")


def kill_at(point: KillPoint, args: list[str], out: Path, cwd: Path) -> Path:
    """Start `nfcompile ARGS`, SIGKILL it at ``point``; the run folder it was writing."""
    since = time.time_ns()
    process = start_cli(*args, cwd=cwd)
    run = None
    while process.poll() is None and run is None:
        run = _new_match(out, point.trigger, since)
        time.sleep(POLL)
    if run is None:
        _, err = process.communicate()
        pytest.fail(f"{point} never came (seed {SEED}); exit {process.returncode}: {err[-2000:]}")
    time.sleep(point.delay)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, f"{point}: the build ended before the kill (seed {SEED})"
    return run


@pytest.mark.slow
def test_killed_three_times_then_resumed_gives_the_uninterrupted_bundle(workspace, reference_bundle, tmp_path):
    rng = random.Random(SEED)
    out = tmp_path / "out"
    build = ["build", str(workspace / "recipe.yaml"), "--out", str(out)]
    scratch: list[str] = []
    for number, point in enumerate(kill_points(rng)):
        run = kill_at(point, build + (["--resume"] if number else []), out, workspace)
        running = _running_stage(run)
        assert running in point.stages, f"meant to kill during {point.phase}, killed in {running} ({point})"
        assert run_folders(out) == [run], "one run, continued by every --resume, never a bundle yet"
        previous, scratch = scratch, _inspect(run)
        # The run after a kill removed what the kill left (a cache file of the same name may be back).
        assert not [name for name in previous if (run / name).exists() and not name.endswith(".bin")], previous
        print(f"killed in {running} at {point}; left {scratch or 'nothing'}")

    finishing = start_cli(*build, "--resume", "--json", cwd=workspace)
    stdout, stderr = finishing.communicate(timeout=600)
    assert finishing.returncode == 0, stderr
    bundle = Path(json.loads(stdout)["artifact"])
    assert run_folders(out) == [bundle] and bundle.name == run.name.removesuffix(PARTIAL_SUFFIX)
    if _inspect(run=bundle):
        pytest.fail("hidden temporary files in the finished bundle")
    assert verify_bundle(bundle).ok

    ours, theirs = (json.loads((b / "manifest.json").read_text()) for b in (bundle, reference_bundle))
    assert ours["model"]["exit"] == theirs["model"]["exit"]
    assert ours["validation"] == theirs["validation"]
    for model in ("model.onnx", "model.int8.onnx"):
        assert onnx_graph_signature(bundle / model) == onnx_graph_signature(reference_bundle / model), model
    exits = [json.loads((b / "exits.json").read_text())["exits"] for b in (bundle, reference_bundle)]
    assert [(e["name"], e["val_accuracy"], e["test_accuracy"], e["params"]) for e in exits[0]] == \
        [(e["name"], e["val_accuracy"], e["test_accuracy"], e["params"]) for e in exits[1]]
    if scratch:  # what the last kill left behind was removed by the last run, said so in its log
        assert "temporary file(s) left by an interrupted build" in stderr


# --------------------------------------------------------------------------- a single write, killed


WRITER = """
import sys
from nfcompile.core.io import write_bytes

target, size = sys.argv[1], int(sys.argv[2])
payloads = [bytes([1]) * size, bytes([2]) * size]
print("ready", flush=True)
written = 0
while True:
    write_bytes(target, payloads[written % 2])
    written += 1
"""


def test_a_file_being_written_when_killed_is_absent_or_whole(tmp_path):
    """A process writes one 8 MiB file over and over through `write_bytes`, alternating two contents,
    and is SIGKILLed at random moments: the target is always absent or one whole content."""
    rng = random.Random(SEED)
    target, size = tmp_path / "model.bin", 8 << 20
    left_behind = 0
    for _ in range(12):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(size)], stdout=subprocess.PIPE,
                                   text=True)
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if target.exists():
            data = target.read_bytes()
            assert len(data) == size and data in (bytes([1]) * size, bytes([2]) * size), "a partial file"
        scratch = [p.name for p in tmp_path.iterdir() if p != target]
        assert all(re.fullmatch(r"\.model\.bin\.[0-9a-z_]+\.tmp", name) for name in scratch), scratch
        left_behind = max(left_behind, len(scratch))
    # The kills did land in the middle of writes (else this test proved nothing), and what they
    # left is hidden scratch that remove_scratch, run at the start of every build, deletes.
    assert left_behind > 0
    removed = remove_scratch(tmp_path)
    assert len(removed) >= left_behind and [p.name for p in tmp_path.iterdir()] == ["model.bin"]
