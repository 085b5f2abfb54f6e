"""Memory and disk as resources: a budget below batch size 1 is refused before training with the
minimum it needs; activation caches spill to disk when host RAM is short and are deleted after
training; two builds at once into one artifacts folder make two complete bundles; a run that another
process is building is left alone."""

from __future__ import annotations

import json
import re

import pytest

from nfcompile.runs import PARTIAL_SUFFIX, RunFolder
from nfcompile.runtime.onnx_io import onnx_graph_signature
from nfcompile.stages.bundle import verify_bundle

from conftest import run_cli
from reliability.helpers import RECIPE_NAME, assert_no_half_written_bundle, cli_main, error_line, run_folders


@pytest.mark.slow
def test_a_budget_below_batch_size_1_is_refused_before_training_with_the_minimum(monkeypatch, capsys, workspace,
                                                                                 tmp_path):
    result = run_cli("-q", "build", "recipe.yaml", "--out", str(tmp_path / "out"), "--set", "budget.memory=1MiB",
                     cwd=workspace, timeout=300)
    line = error_line(result.stderr)
    assert result.returncode == 2, result.stderr
    assert "budget.memory 1.0 MiB is below the" in line and "that batch size 1 needs for unit" in line, line
    assert_no_half_written_bundle(tmp_path / "out", stages_finished=False)
    # The minimum it names is the real one: the plan fits at that budget and not one MiB below.
    minimum = int(re.search(r"set budget\.memory to at least (\d+)MiB", line).group(1))
    plan = ("-q", "plan", str(workspace / "recipe.yaml"), "--json", "--set")
    code, out, err = cli_main(monkeypatch, capsys, *plan, f"budget.memory={minimum}MiB")
    assert code == 0, err
    assert all(block["batch_size"] >= 1 for block in json.loads(out)["plan"]["blocks"])
    code, _, err = cli_main(monkeypatch, capsys, *plan, f"budget.memory={minimum - 1}MiB")
    assert code == 2 and "batch size 1 needs" in error_line(err)


def test_caches_spill_to_disk_when_host_ram_is_short_and_are_gone_after_the_build(monkeypatch, capsys, workspace,
                                                                                  reference_bundle):
    state = reference_bundle / "state"
    plan = json.loads((state / "plan.json").read_text())["result"]
    train = json.loads((state / "train.json").read_text())["result"]
    cached = plan["blocks"][:-1]  # the last block's outputs feed nothing
    assert len(cached) >= 2 and all(block["cache_placement"] == "disk" for block in cached)
    # Every block a later block read from (a block that stalled fills none: nothing after it trains).
    feeding = [block for block, after in zip(train["blocks"], train["blocks"][1:]) if after["trained"]]
    assert feeding and all(block["cache_placement"] == "disk" and block["cache_seconds"] > 0 for block in feeding)
    # Nothing of them is left: no cache file in the bundle, not even the folder they lived in.
    assert not (reference_bundle / "checkpoint" / "cache").exists()
    assert not [p for p in reference_bundle.rglob("*") if p.suffix == ".bin"]
    # It is the host RAM limit that sends them to disk: where the budget leaves headroom for a cache
    # (batches capped at 32 under 8 MiB; a cache counts against the budget on CPU), the plan keeps it
    # in memory with RAM to spare and spills it with the recipe's tiny limit.
    placements = {}
    for limit in ("null", "1KiB"):
        code, out, err = cli_main(monkeypatch, capsys, "-q", "plan", str(workspace / "recipe.yaml"), "--json",
                                  "--set", "budget.memory=8MiB", "--set", "train.neuroflux.max_batch_size=32",
                                  "--set", f"train.neuroflux.cache.max_host_bytes={limit}")
        assert code == 0, err
        placements[limit] = [b["cache_placement"] for b in json.loads(out)["plan"]["blocks"][:-1]]
    assert placements["1KiB"] and set(placements["1KiB"]) == {"disk"}
    assert "device" in placements["null"]


def test_two_builds_at_once_into_one_folder_make_two_complete_bundles(concurrent_builds):
    first, second = concurrent_builds.bundles
    assert first != second and first.parent == second.parent == concurrent_builds.out / RECIPE_NAME
    assert run_folders(concurrent_builds.out) == sorted([first, second])  # no .partial left behind
    # They did run at the same time: each started before the other finished.
    spans = [((b / "state" / "recipe.json").stat().st_mtime, (b / "manifest.json").stat().st_mtime)
             for b in (first, second)]
    assert max(start for start, _ in spans) < min(end for _, end in spans)
    for bundle in (first, second):
        assert verify_bundle(bundle, parity=True).ok
    # Neither disturbed the other: the same recipe and seed gave the same model and numbers.
    assert concurrent_builds.summaries[0]["chosen_exit"] == concurrent_builds.summaries[1]["chosen_exit"]
    assert onnx_graph_signature(first / "model.onnx") == onnx_graph_signature(second / "model.onnx")
    manifests = [json.loads((b / "manifest.json").read_text()) for b in (first, second)]
    assert manifests[0]["validation"] == manifests[1]["validation"]
    # And nothing was written outside --out (the recipe, the working folder).
    assert concurrent_builds.outside_after == concurrent_builds.outside_before


def test_a_run_another_process_is_building_is_left_alone(monkeypatch, capsys, workspace, tmp_path):
    out = tmp_path / "out"
    run = RunFolder.create(out, RECIPE_NAME)
    run.state.mkdir()
    (run.state / "recipe.json").write_text("{}")
    with run.locked():  # what the other process holds while its first stage runs
        code, _, err = cli_main(monkeypatch, capsys, "-q", "build", str(workspace / "recipe.yaml"), "--out", str(out),
                                "--resume")
    assert code == 2 and "is being built by another nfcompile process" in error_line(err)
    assert run.path.name.endswith(PARTIAL_SUFFIX) and (run.state / "recipe.json").read_text() == "{}"
    assert run_folders(out) == [run.path]
