"""Block training on two processes (CPU, gloo, localhost), through the real CLI: `nfcompile build --nproc
2` and `torchrun ... -m nfcompile build`. The bundle verifies; both ranks hold the same weights after
every block, whose heads also train one epoch alone (through DDP); every block trains at the noise scale
the ranks measured together (the recipe's batch_policy); they trained on disjoint shards that cover the
training set; a killed 2-process run resumes to the same exit and ONNX graph as an uninterrupted one
(and refuses another world size); a rank killed mid-block fails the whole job and leaves no bundle."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nfcompile.data import load_data
from nfcompile.recipe import load_recipe
from nfcompile.runtime.onnx_io import onnx_graph_signature
from nfcompile.stages.train.ranks import expand

from conftest import TINY_DIGITS_RECIPE, run_cli, write_recipe

pytestmark = pytest.mark.slow

# Blocks at their noise scale: every rank measures on its own shard and all must train at one batch. A head
# epoch after every block, then slim heads: the heads alone train through DDP on frozen units (the slim ones on
# each rank's cached features), and must stay equal across ranks, every rank shipping the same heads.
RECIPE = TINY_DIGITS_RECIPE.replace("epochs: 6", "epochs: 4").replace(
    "lr_scale: 1.0}", "lr_scale: 1.0, batch_policy: noise_scale, head_epochs: 1, slim_heads: {share: 0.5, epochs: 2}}")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "nfcompile", *args]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("torchrun")
    write_recipe(folder, RECIPE, "tiny.yaml")
    return folder


@pytest.fixture(scope="module")
def bundle(workspace) -> tuple[Path, dict]:
    result = run_cli("-q", "build", str(workspace / "tiny.yaml"), "--out", str(workspace / "whole"), "--json",
                     "--nproc", "2")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # rank 0 alone prints
    return Path(summary["artifact"]), summary


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_a_two_process_build_is_a_bundle_verify_accepts(bundle):
    path, summary = bundle
    result = run_cli("verify", str(path))
    assert result.returncode == 0, result.stderr
    assert "bundle intact" in result.stdout
    manifest = _manifest(path)
    assert summary["chosen_exit"] == manifest["model"]["exit"]
    record = manifest["distributed"]
    assert record["world_size"] == 2 and record["backend"] == "gloo"
    train = json.loads((path / "state" / "train.json").read_text())["result"]
    assert [r["rank"] for r in record["ranks"]] == [0, 1]
    for rank in record["ranks"]:  # every rank's own measured peak, per block, within the per-process budget
        assert len(rank["block_peak_bytes"]) == len(train["blocks"])
        assert all(0 < peak <= train["budget_bytes"] for peak in rank["block_peak_bytes"])


def test_both_ranks_hold_the_same_weights_after_every_block(bundle):
    path, _ = bundle
    record = _manifest(path)["distributed"]
    blocks = len(json.loads((path / "state" / "train.json").read_text())["result"]["blocks"])
    first, second = (r["block_digests"] for r in record["ranks"])
    assert len(first) == blocks >= 2
    assert first == second and len(set(first)) == blocks  # equal across ranks, changing block to block
    assert record["weights_identical"] is True


def test_every_block_ran_its_head_epoch_and_slim_heads_on_both_ranks(bundle):
    path, _ = bundle
    blocks = json.loads((path / "state" / "train.json").read_text())["result"]["blocks"]
    assert blocks and all(len(b["history"]) == b["epochs_run"] + 1 for b in blocks)
    assert all(len(b["slim_head_filters"]) == len(b["units"]) and b["time_spent"]["slim heads"] > 0 for b in blocks)
    assert any(f for b in blocks for f in b["slim_head_filters"]), "no exit shipped a slim head: nothing to compare"


def test_each_block_trains_at_the_noise_scale_both_ranks_measured_together(bundle):
    path, _ = bundle
    blocks = json.loads((path / "state" / "train.json").read_text())["result"]["blocks"]
    planned = json.loads((path / "state" / "plan.json").read_text())["result"]["blocks"]
    measured = [(b, p) for b, p in zip(blocks, planned) if b["noise_scale"] is not None]
    assert measured, [p["batch_size"] for p in planned]
    for block, plan in measured:  # one global noise scale, shared out between the two processes
        assert block["batch_size"] == max(2, min(plan["batch_size"], int(block["noise_scale"]) // 2))


def test_the_ranks_trained_on_disjoint_shards_covering_the_training_set(bundle):
    path, _ = bundle
    manifest = _manifest(path)
    recipe = load_recipe(Path(manifest["recipe_source"]))
    train_samples = len(load_data(recipe.data, recipe.seed).train)
    (size, first), = manifest["distributed"]["ranks"][0]["trained_indices"].items()
    (size_again, second), = manifest["distributed"]["ranks"][1]["trained_indices"].items()
    assert size == size_again == str(train_samples)
    a, b = set(expand(first)), set(expand(second))
    assert a and b and not a & b
    assert a | b == set(range(int(size)))


def _run_dir(out: Path) -> Path | None:
    runs = list((out / "tiny-digits").glob("*")) if (out / "tiny-digits").is_dir() else []
    return runs[0] if runs else None


def _start_and_wait_for_first_block(args: list[str], out: Path) -> tuple[subprocess.Popen, Path]:
    """Start a 2-process job and return once its first block is checkpointed (the run mid-training)."""
    job = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        run = _run_dir(out)
        if run is not None and (run / "checkpoint" / "checkpoint.pt").is_file():
            return job, run
        if job.poll() is not None:
            pytest.fail(f"the job ended before its first block was checkpointed: {job.communicate()[1][-2000:]}")
        time.sleep(0.05)
    _kill_job(job)
    pytest.fail("no block was checkpointed in time")


def _kill_job(job: subprocess.Popen) -> None:
    """SIGKILL torchrun and every process under it (torchrun starts each rank in a session of its own)."""
    processes = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)


def test_a_killed_two_process_run_resumes_to_the_same_exit_and_graph(workspace, bundle):
    out = workspace / "killed"
    recipe = str(workspace / "tiny.yaml")
    job, run = _start_and_wait_for_first_block(_torchrun("-q", "build", recipe, "--out", str(out), "--json"), out)
    _kill_job(job)  # the whole job: torchrun and both ranks, mid-training
    job.communicate()
    assert run.name.endswith(".partial")
    assert not (run / "state" / "train.json").is_file()  # training had not finished

    other = run_cli("-q", "build", recipe, "--out", str(out), "--resume")  # one process: another world size
    assert other.returncode == 2
    assert other.stderr.startswith("error:") and "same world size" in other.stderr and "--nproc 2" in other.stderr

    resumed = subprocess.run(_torchrun("-q", "build", recipe, "--out", str(out), "--json", "--resume"), env=ENV,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    path, whole = Path(summary["artifact"]), bundle[0]
    train = json.loads((path / "state" / "train.json").read_text())["result"]
    assert train["details"]["resumed_blocks"] >= 1
    assert summary["chosen_exit"] == bundle[1]["chosen_exit"]
    assert onnx_graph_signature(path / "model.onnx") == onnx_graph_signature(whole / "model.onnx")
    assert run_cli("verify", str(path)).returncode == 0


def test_a_rank_killed_mid_block_fails_the_job_and_leaves_no_bundle(workspace):
    out = workspace / "rank-killed"
    job, run = _start_and_wait_for_first_block(
        [sys.executable, "-m", "nfcompile", "-q", "build", str(workspace / "tiny.yaml"), "--out", str(out),
         "--nproc", "2"], out)
    ranks = {p.environ().get("RANK"): p for p in psutil.Process(job.pid).children(recursive=True)
             if p.environ().get("RANK") is not None}
    assert set(ranks) == {"0", "1"}
    ranks["1"].send_signal(signal.SIGKILL)
    try:
        _, stderr = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            _kill_job(job)
    assert job.returncode != 0
    assert "rank 1" in stderr and "failed" in stderr  # torchrun's verdict, then ours on one line
    assert not ranks["0"].is_running()
    folders = list((out / "tiny-digits").iterdir())
    assert folders == [run] and run.name.endswith(".partial")  # nothing became a bundle
    assert not (run / "manifest.json").exists()
