"""The benchmark suite keeps working: its arithmetic on hand-made numbers, and every registered
comparison run once, end to end, on a tiny model (a narrow ResNet-18 on 96 digits, one epoch, one
budget). The end-to-end test asserts the structure of what the suite writes, never a timing."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys

import pytest

from conftest import REPO

if str(REPO) not in sys.path:  # `benchmarks` lives beside the package, not inside it
    sys.path.insert(0, str(REPO))

from benchmarks import measures  # noqa: E402
from benchmarks.config import SuiteConfig, Setup, full_config, quick_config  # noqa: E402
from benchmarks.registry import Comparison, get_comparison, list_comparisons, register_comparison  # noqa: E402
from benchmarks.results import machine_slug, results_path  # noqa: E402
from nfcompile.core.results import METER_SCAN, NOISE_SCALE, BlockResult, EpochRecord, TrainResult  # noqa: E402

SUITE = ["time_to_accuracy", "deliverable", "ablations", "profiler_fidelity", "pipeline_overhead", "gradient_filter",
         "pruning", "engine_efficiency", "minimum_budget", "accuracy_gap", "scaling", "learning_rate"]


# --------------------------------------------------------------------------- arithmetic


def _block(index: int, accuracies: list[tuple[float, ...]], seconds: list[float], *, cache: float = 0.0,
           scan: float = 0.0, noise: float = 0.0, trained: bool = True) -> BlockResult:
    history = tuple(EpochRecord(epoch=i + 1, lr=0.1, train_loss=(1.0,) * len(acc), val_accuracy=acc, seconds=s)
                    for i, (acc, s) in enumerate(zip(accuracies, seconds)))
    return BlockResult(index=index, units=(index,), batch_size=8, trained=trained, stop_reason="epochs",
                       epochs_run=len(history), best_val_accuracy=max(accuracies, default=()),
                       measured_peak_bytes=100, predicted_peak_bytes=100, budget_bytes=200,
                       seconds=sum(seconds) + 0.5 + noise, cache_placement="disk", cache_bytes=10,
                       cache_seconds=cache, history=history,
                       time_spent={**({METER_SCAN: scan} if scan else {}), **({NOISE_SCALE: noise} if noise else {})})


def test_accuracy_curve_chains_blocks_and_their_caching_passes():
    result = TrainResult(method="neuroflux", device="cpu", budget_bytes=200, checkpoint="c", exit_units=(0, 1),
                         exit_val_accuracy=(0.6, 0.8), seconds=9.0, blocks=(
                             _block(0, [(0.3, 0.5), (0.4, 0.6)], [1.0, 2.0], cache=1.5, noise=0.4),
                             _block(1, [(0.55,), (0.8,)], [1.0, 1.0], scan=0.25),
                             _block(2, [], [], trained=False)))
    curve = measures.accuracy_curve(result)
    # Block 0's epochs start after its 0.4 s noise-scale measurement (inside its seconds). Block 1 starts
    # after block 0's 3.9 s (measurement, epochs, bookkeeping), 1.5 s of caching and its own memory
    # meter's 0.25 s scan.
    assert curve == ((1.4, 0.5), (3.4, 0.6), (6.65, 0.6), (7.65, 0.8))
    assert measures.time_to_target(curve, 0.6) == 3.4
    assert measures.time_to_target(curve, 0.8) == 7.65
    assert measures.time_to_target(curve, 0.81) is None


def test_accuracy_curve_counts_what_a_block_keeps_after_its_epochs_when_the_block_ends():
    # Slim heads (neuroflux.slim_heads) raised block 0's second exit to 0.7 after its epochs: that counts from
    # the end of the block's seconds (2 s of epochs, 0.5 s of the rest), not from its last epoch.
    slimmed = dataclasses.replace(_block(0, [(0.3, 0.5), (0.4, 0.6)], [1.0, 1.0], cache=1.0),
                                  best_val_accuracy=(0.4, 0.7))
    result = TrainResult(method="neuroflux", device="cpu", budget_bytes=200, checkpoint="c", exit_units=(0, 1, 2),
                         exit_val_accuracy=(0.4, 0.7, 0.65), seconds=9.0,
                         blocks=(slimmed, _block(1, [(0.65,)], [1.0])))
    curve = measures.accuracy_curve(result)
    assert curve == ((1.0, 0.5), (2.0, 0.6), (2.5, 0.7), (4.5, 0.7))
    assert measures.time_to_target(curve, 0.7) == 2.5


def test_common_target_is_reached_by_everyone_and_capped():
    assert measures.common_target([0.974, 0.9889, 0.962], cap=0.95, step=0.005) == 0.95
    assert measures.common_target([0.9444, 0.99], cap=0.95, step=0.005) == 0.94
    assert measures.common_target([0.87, 0.99], cap=0.95, step=0.005) == 0.87  # exact multiples stay
    with pytest.raises(ValueError):
        measures.common_target([], cap=0.95, step=0.005)


def test_spreads_and_paired_ratios_skip_what_was_not_measured():
    value = measures.spread([2.0, None, 4.0])
    assert (value.mean, value.min, value.max, value.values) == (3.0, 2.0, 4.0, (2.0, 4.0))
    assert value.std == pytest.approx(2 ** 0.5)
    assert measures.spread([None]) is None
    ratios = measures.paired_ratios([6.0, 9.0, None], [2.0, 3.0, 1.0])
    assert ratios["values"] == [3.0, 3.0] and ratios["std"] == 0.0
    assert measures.relative_error(110, 100) == pytest.approx(0.1)
    assert measures.relative_error(1, 0) is None


# --------------------------------------------------------------------------- registry, config, files


def test_registry_lists_the_suite_in_order_and_refuses_duplicates():
    assert [c.name for c in list_comparisons()] == SUITE
    first = list_comparisons()[0]
    with pytest.raises(ValueError, match="registered twice"):
        register_comparison(Comparison(first.name, "again", "?", first.run, first.render))
    assert get_comparison("ablations").title.startswith("Ablations")
    with pytest.raises(KeyError, match="choose from time_to_accuracy"):
        get_comparison("no_such_comparison")


def test_quick_mode_runs_digits_and_the_full_run_fashion_mnist_where_it_is_installed(tmp_path, monkeypatch):
    import benchmarks.config as config_module

    quick = quick_config(cifar_root=tmp_path)
    assert {s.name for s in quick.setups} == {"resnet18-digits", "vgg16_bn-digits"}
    monkeypatch.setattr(config_module, "FASHION_MNIST_ROOT", tmp_path / "absent")
    fallback = full_config(cifar_root=tmp_path)
    assert {s.name for s in fallback.setups} == {"resnet18-digits", "vgg16_bn-digits"}
    assert any("apt-get install -y dataset-fashion-mnist" in why for _, why in fallback.skipped)
    assert quick.repeats < fallback.repeats and quick.pruning_repeats < fallback.pruning_repeats
    monkeypatch.setattr(config_module, "FASHION_MNIST_ROOT", tmp_path)  # a folder that exists
    real = full_config(cifar_root=tmp_path)
    assert {s.name for s in real.setups} == {"resnet18-fashion_mnist", "vgg16_bn-fashion_mnist"}
    for config in (fallback, real, quick):
        assert {config.ablation_budget, config.deliverable_budget} <= set(config.budget_labels())
        # No CIFAR-10 at the given root: skipped with a note that says where it looked (or why).
        assert any(name == "resnet18-cifar10" for name, _ in config.skipped)
    assert any(str(tmp_path) in why for name, why in real.skipped if name == "resnet18-cifar10")


def test_results_files_are_named_by_date_and_machine_and_never_overwritten(tmp_path):
    from datetime import datetime

    slug = machine_slug({"processor": "AMD EPYC 7B13 64-Core Processor", "cpu_count": 2})
    assert slug == "amd-epyc-7b13-64-core-2cpu"
    assert machine_slug({"gpu": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    when = datetime(2025, 1, 2)
    first = results_path(tmp_path, when, slug, "full")
    assert first.name == f"2025-01-02-{slug}.json"
    first.write_text("{}")
    assert results_path(tmp_path, when, slug, "full").name == f"2025-01-02-{slug}-2.json"
    assert results_path(tmp_path, when, slug, "quick").name == f"2025-01-02-{slug}-quick.json"


def test_the_newest_suite_results_file_is_found_among_the_other_benchmarks_files(tmp_path):
    import json

    from benchmarks.results import FORMAT, latest_results

    assert latest_results(tmp_path) is None
    (tmp_path / "2025-01-02-x.json").write_text(json.dumps({"format": FORMAT, "finished": "2025-01-02T10:00:00"}))
    (tmp_path / "2025-01-02-x-2.json").write_text(json.dumps({"format": FORMAT, "finished": "2025-01-02T12:00:00"}))
    # A later shared_cpu file records "finished" too, but it is not a suite run.
    (tmp_path / "shared-cpu-2025-01-03.json").write_text(json.dumps({"finished": "2025-01-03T09:00:00"}))
    (tmp_path / "2025-01-03-meter-overhead.json").write_text(json.dumps({"format": "nfcompile.meter_overhead/1"}))
    assert latest_results(tmp_path) == tmp_path / "2025-01-02-x-2.json"


def test_comparison_5_reads_the_newest_before_after_file_of_a_day_with_two(tmp_path):
    import json

    import benchmarks.before_after as before_after
    from benchmarks.comparisons.pipeline_overhead import latest_before_after
    from benchmarks.results import unused_path

    first = unused_path(tmp_path, f"2025-01-02-{before_after.NAME}")
    first.write_text(json.dumps({"date": "2025-01-02T10:00:00+00:00"}))
    second = unused_path(tmp_path, f"2025-01-02-{before_after.NAME}")
    second.write_text(json.dumps({"date": "2025-01-02T18:00:00+00:00"}))
    assert second.name == f"2025-01-02-{before_after.NAME}-2.json"
    assert latest_before_after(tmp_path) == second
    (tmp_path / f"2025-01-01-{before_after.NAME}.json").write_text(json.dumps({"date": "2025-01-01T23:00:00+00:00"}))
    assert latest_before_after(tmp_path) == second


def test_comparison_5_states_how_training_itself_changed_and_each_builds_shares():
    from benchmarks.comparisons.pipeline_overhead import render_before_after

    def run(round_, code, plan, train, score):
        stages = {name: {"seconds": s, "status": "ok"}
                  for name, s in (("plan", plan), ("train", train), ("score", score))}
        return {"round": round_, "code": code, "stages": stages, "wall_seconds": 60.0, "cpu_seconds": 90.0,
                "load_average_before": [0.5, 0.5, 0.5], "load_average_after": [1.0, 1.0, 1.0]}

    document = {"command": "python -m benchmarks.before_after --before abc", "recipe": "recipes/quickstart.yaml",
                "before": "a" * 40, "after": "b" * 40, "cpu_count": 2,
                "runs": [run(1, "before", 10.0, 20.0, 25.0), run(1, "after", 6.0, 30.0, 9.0),
                         run(2, "before", 10.0, 25.0, 25.0), run(2, "after", 6.0, 30.0, 9.0)]}
    text = render_before_after(document, "x.json")
    assert "Training itself took 1.20-1.50x as long after as before" in text
    assert "| 1 | after | 6.0 | 30.0 | 9.0 | – | – | – | – | 20% | 30% |" in text


def test_comparison_5_shows_the_newest_profile_cache_run_with_each_builds_plan_share(tmp_path):
    import json

    from benchmarks.comparisons.pipeline_overhead import latest_profile_cache, render_profile_cache

    def run(round_, profiles, plan, train):
        stages = {name: {"seconds": s, "status": "ok"} for name, s in (("plan", plan), ("train", train))}
        return {"round": round_, "profiles": profiles, "stages": stages, "wall_seconds": 40.0, "cpu_seconds": 60.0,
                "load_average_before": [1.0, 1.0, 1.0], "load_average_after": [1.2, 1.0, 1.0]}

    document = {"command": "python -m benchmarks.profile_cache", "recipe": "recipes/quickstart.yaml", "cpu_count": 2,
                "date": "2025-01-02T10:00:00+00:00",
                "runs": [run(1, "empty cache", 4.0, 20.0), run(1, "warm cache", 1.0, 20.0)]}
    assert latest_profile_cache(tmp_path) is None
    (tmp_path / "2025-01-02-profile-cache.json").write_text(json.dumps(document))
    assert latest_profile_cache(tmp_path) == tmp_path / "2025-01-02-profile-cache.json"
    text = render_profile_cache(document, "x.json")
    assert "| 1 | empty cache | 4.0 | 20.0 | – | – | – | – | – | 20% | – |" in text
    assert "| 1 | warm cache | 1.0 | 20.0 | – | – | – | – | – | 5% | – |" in text


# --------------------------------------------------------------------------- the whole suite, tiny


TINY = Setup("tiny-resnet18", ("model.arch=resnet18", "model.width=0.125", "data.image_size=16"))


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    from benchmarks.run import run_suite

    folder = tmp_path_factory.mktemp("bench")
    config = SuiteConfig(
        mode="test", device="cpu", seed=0, repeats=1, setups=(TINY,), budget_anchors=(("stringent", 4),),
        overrides=("data.max_train_samples=96", "data.max_eval_samples=32", "train.epochs=1",
                   "export.exporter=torchscript", "bench.warmup=1", "bench.repeats=3",
                   "quantize.calibration_samples=16", "train.neuroflux.profile_batch_sizes=[2, 8]",
                   # A model trained for one epoch may lose more than a point to INT8: that gate is the
                   # product's, and its failure would only stop the pipeline this test times.
                   "quantize.max_accuracy_drop=1.0"),
        timing_rounds=1, methods_setup=TINY, pruning_repeats=2)
    path, document = run_suite(config, list_comparisons(), command="pytest", results_dir=folder / "results",
                               results_md=folder / "RESULTS.md", scratch=folder)
    return folder, path, document


def test_suite_writes_a_results_file_with_every_comparison(suite_run):
    folder, path, document = suite_run
    assert path.parent == folder / "results" and path.name.endswith("-test.json")
    assert json.loads(path.read_text()) == document
    assert document["format"] == "nfcompile.benchmarks/1" and document["command"] == "pytest"
    assert {"processor", "cpu_count", "torch_threads", "load_average", "load_average_end"} <= set(document["machine"])
    assert document["machine"]["torch_threads"] == 1
    failed = {o["name"]: o["reason"] for o in document["comparisons"] if o["status"] != "ok"}
    assert not failed
    assert [o["name"] for o in document["comparisons"]] == SUITE
    (setup,) = document["setups"]
    assert setup["name"] == TINY.name and set(setup["budgets"]) == {"stringent"}
    assert setup["samples"]["train"] == 96
    # The scratch folder (checkpoints, caches, ONNX files) is gone: only the outputs remain.
    assert sorted(p.name for p in folder.iterdir()) == ["RESULTS.md", "results"]


def _results(document):
    return {outcome["name"]: outcome["result"] for outcome in document["comparisons"]}


def test_time_to_accuracy_reports_every_contender_against_the_budget(suite_run):
    _, _, document = suite_run
    (entry,) = _results(document)["time_to_accuracy"]["setups"]
    (budget,) = entry["budgets"]
    assert set(budget["contenders"]) == {"neuroflux", "backprop", "backprop+checkpointing"}
    assert 0 < budget["target"] <= 0.95
    for name, summary in budget["contenders"].items():
        if not summary["fits"]:
            assert summary["note"]
            continue
        assert summary["budget_bytes"] == budget["budget_bytes"] and summary["measured_peak_bytes"] > 0
        assert summary["reached_target"] == summary["repeats"] == 1  # the target is one everyone reached
        assert summary["seconds_to_target"]["mean"] > 0
        # What each evaluated at: the plan's evaluation batch, never below the training batch.
        assert len(summary["evaluation_batch_sizes"]) == len(summary["batch_sizes"])
        assert all(e >= b for e, b in zip(summary["evaluation_batch_sizes"], summary["batch_sizes"]))
    assert set(budget["speedup"]) == {"backprop", "backprop+checkpointing"}
    assert len(budget["runs"]) == 3


def test_deliverable_ablations_fidelity_and_overhead_have_their_figures(suite_run):
    _, _, document = suite_run
    result = _results(document)
    (deliverable,) = result["deliverable"]["setups"]
    (repeat,) = deliverable["repeats"]
    # One epoch on 96 images decides nothing about which exit wins: check that the figures are the
    # chosen exit's and the backprop model's own, whichever exit it is.
    assert repeat["param_reduction"] == pytest.approx(repeat["full_backprop"]["params"] / repeat["chosen"]["params"])
    assert deliverable["summary"]["param_reduction"]["mean"] == pytest.approx(repeat["param_reduction"])
    assert set(deliverable["summary"]["throughput_gain"]) == {"1", "32"}
    held = repeat["held_out"]  # the selection rule on validation images it did not see
    assert list(held["rules"]) == ["as measured", "confidence 0.95"]
    assert held["images"][0] + held["images"][1] == repeat["val_samples"]
    for rule in held["rules"].values():
        assert sum(rule["picks"].values()) == held["halvings"] and 0 <= rule["beyond_share"] <= 1
        assert set(rule["picks"]) <= {f"exit_{u:02d}" for u in range(repeat["units"])}

    (ablations,) = result["ablations"]["setups"]
    assert [p["name"] for p in ablations["pairs"]] == ["heads", "batch", "cache", "early_stop", "batch_cap",
                                                       "batch_policy", "lr", "units_per_block", "head_warm_start"]
    by_noise = ablations["variants"]["batch at each block's noise scale"]["batch_sizes"]
    largest = ablations["variants"]["neuroflux (default)"]["batch_sizes"]
    assert len(by_noise) == len(largest) and all(n <= b for n, b in zip(by_noise, largest))
    assert ablations["other_budgets"] == []  # this suite has one budget
    assert ablations["variants"]["fixed-width heads"]["head_filters"] == [64] * 9
    assert len(set(ablations["variants"]["one global batch"]["batch_sizes"])) == 1
    assert ablations["variants"]["recompute earlier blocks"]["cache_placements"][0] == "recompute"
    assert ablations["variants"]["early stop off"]["chosen_exits"]

    fidelity = result["profiler_fidelity"]
    assert fidelity["summary"]["blocks"] >= 3 and fidelity["summary"]["abs_error"] is not None
    assert {g["method"] for g in fidelity["groups"]} >= {"neuroflux", "backprop"}
    measured = [b for g in fidelity["groups"] for b in g["blocks"] if b["measured_max"]]
    assert measured and all(b["held_by"] for b in measured)  # the meter's largest category at each peak
    # A block beyond 15% says what held its peak; one within it does not.
    off = copy.deepcopy(fidelity)
    block = off["groups"][0]["blocks"][0]
    block.update(errors=[-0.5], held_by="a holder named here")
    assert "held by a holder named here" in get_comparison("profiler_fidelity").render(off)
    block.update(errors=[0.1])
    assert "held by a holder named here" not in get_comparison("profiler_fidelity").render(off)

    (overhead,) = result["pipeline_overhead"]["setups"]
    assert overhead["train_seconds"] > 0 and overhead["deploy_seconds"]["mean"] > 0
    assert overhead["stages"]["export"]["status"] == ["ok"]
    assert overhead["stages"]["engine"]["status"] == ["skipped"] and overhead["stages"]["engine"]["reason"]
    gate = overhead["int8_gate"]  # what the INT8 gate judged, from the validate_int8 record
    assert gate["status"] == overhead["stages"]["validate_int8"]["status"][0] and gate["samples"] > 0
    assert 0 <= gate["int8_accuracy"] <= 1 and gate["limit"] > 0
    assert "INT8 gate" in get_comparison("pipeline_overhead").render(result["pipeline_overhead"])


def test_ablation_at_other_budgets_renders_beside_the_main_table(suite_run):
    # The tiny suite has one budget: give its own stringent pair as if measured at a second one.

    _, _, document = suite_run
    (entry,) = copy.deepcopy(_results(document)["ablations"]["setups"])
    pair = next(p for p in entry["pairs"] if p["name"] == "units_per_block")
    variants = {label: entry["variants"][label] for label in ("neuroflux (default)", pair["variant"])}
    entry["other_budgets"] = [{"budget": "moderate", "ablation": pair["name"], "variants": variants, "pair": pair}]
    text = get_comparison("ablations").render({"setups": [entry]})
    assert "the same ablation at the other budgets" in text
    rows = [line for line in text.splitlines() if line.startswith("| moderate |")]
    assert [row.split(" | ")[1] for row in rows] == ["neuroflux (default)", pair["variant"]]
    assert "1 (reference)" in rows[0]


def test_gradient_filter_and_pruning_compare_with_their_baselines(suite_run):
    _, _, document = suite_run
    result = _results(document)
    gradient_filter = result["gradient_filter"]
    (repeat,) = gradient_filter["repeats"]
    assert repeat["filtered"]["method"] == "gradient_filter" and repeat["backprop"]["method"] == "backprop"
    assert repeat["filtered"]["layers"] == repeat["backprop"]["layers"]  # the same layers on both sides
    # Saved activations are measured, not assumed: the filtered convs keep less than the plain ones.
    assert gradient_filter["summary"]["layer_memory_reduction"]["mean"] > 1
    assert gradient_filter["summary"]["step_speedup"]["mean"] > 0

    pruning = result["pruning"]
    # Its own repeat count, each repeat with its own seed and its own test split.
    assert [repeat["seed"] for repeat in pruning["repeats"]] == [0, 1]
    assert len({repeat["test_split"] for repeat in pruning["repeats"]}) == 2
    for repeat in pruning["repeats"]:
        assert set(repeat["outcomes"]) == {"drive", "magnitude", "snip", "synflow", "dense"}
        for method in ("drive", "magnitude", "snip", "synflow"):
            assert abs(repeat["outcomes"][method]["sparsity_reached"] - pruning["sparsity"]) < 0.01
            assert (repeat["outcomes"][method]["deflated_onnx_bytes"]
                    < repeat["outcomes"]["dense"]["deflated_onnx_bytes"])
    assert set(pruning["summary"]["time_vs_drive"]) == {"magnitude", "snip", "synflow"}


def test_results_md_is_rendered_from_the_file_and_can_be_regenerated(suite_run, tmp_path):
    from benchmarks.report import main as report_main

    folder, path, _ = suite_run
    text = (folder / "RESULTS.md").read_text()
    assert "`pytest`" in text and "## Against the published NeuroFlux figures" in text
    for number, title in enumerate(["Time to accuracy", "The deliverable", "Ablations", "Profiler fidelity",
                                    "Pipeline overhead", "Gradient filtering", "DRIVE pruning"], start=1):
        assert f"## {number}. {title}" in text
    assert "2.3–6.1x" in text and "10.9–29.4x" in text and "1.6–4.0x" in text
    out = tmp_path / "again.md"
    assert report_main([str(path), "--out", str(out)]) == 0
    assert out.read_text().split("\n", 3)[3] == text.split("\n", 3)[3]  # all but the line naming the file


def test_cli_lists_the_comparisons(capsys):
    from benchmarks.run import main

    assert main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == SUITE


def test_engine_efficiency_counts_and_times_every_block_and_backprop(suite_run):
    folder, _, document = suite_run
    (entry,) = _results(document)["engine_efficiency"]["setups"]
    contenders = entry["contenders"]
    assert set(contenders) == {f"block {i}" for i in range(len(entry["block_batches"]))} | {"backprop"}
    for name, figures in contenders.items():
        assert figures["flops_per_step"] > 0 and figures["steps"] >= 3 and figures["wall_seconds"] > 0
        assert figures["flops_per_second"] == pytest.approx(
            figures["flops_per_step"] * figures["steps"] / figures["wall_seconds"])
        if name != "backprop":
            assert figures["vs_backprop"] == pytest.approx(
                figures["flops_per_second"] / contenders["backprop"]["flops_per_second"])
    # The whole NeuroFlux run beside it, split by where its time went; the rendered section says its overhead.
    spent = entry["whole_run"]["time_spent"]
    assert {"steps", "batches", "evaluation", "snapshots", "rest"} <= set(spent) and spent["steps"] > 0
    assert 0 < sum(spent.values()) <= entry["whole_run"]["wall_seconds"]  # the call also sets up and scopes it
    assert "of it is not training steps" in (folder / "RESULTS.md").read_text()


def test_minimum_budgets_are_ordered_and_the_run_below_them_holds_its_budget(suite_run):
    _, _, document = suite_run
    (entry,) = _results(document)["minimum_budget"]["setups"]
    minima = entry["minimum_bytes"]
    assert all(v > 0 for v in minima.values())
    below = entry.get("neuroflux_below")
    if minima["neuroflux"] < minima["backprop+checkpointing"]:
        assert minima["neuroflux"] <= below["budget_bytes"] < minima["backprop+checkpointing"]
        if below["fits"]:
            assert max(below["measured_peak_bytes"]) <= below["budget_bytes"]
    else:
        assert below is None


def test_linear_probes_read_what_features_carry():
    import numpy as np

    from benchmarks.comparisons.accuracy_gap import probe_accuracy

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    informative = rng.normal(size=(600, 8)) + 3.0 * np.eye(3, 8)[labels]
    assert probe_accuracy(informative[:400], labels[:400], informative[400:], labels[400:]) > 0.9
    noise = rng.normal(size=(600, 8))
    assert probe_accuracy(noise[:400], labels[:400], noise[400:], labels[400:]) < 0.5


def test_accuracy_gap_probes_every_exit_of_both_methods(suite_run):
    _, _, document = suite_run
    (entry,) = _results(document)["accuracy_gap"]["setups"]
    exits = entry["exits"]
    assert exits and len(entry["head_val_accuracy"]) == len(exits)
    assert set(entry["probe_val_accuracy"]) == {"neuroflux", "backprop", "untrained"}
    for accuracies in entry["probe_val_accuracy"].values():
        assert len(accuracies) == len(exits) and all(0.0 <= a <= 1.0 for a in accuracies)
    assert entry["val_samples"] == 32


def test_results_md_reads_every_goal_off_the_comparisons_and_merges_a_later_run(suite_run):
    from benchmarks.report import merge_documents, recipe_differences, render_results

    _, _, document = suite_run
    first = {**document, "comparisons": [o for o in document["comparisons"] if o["name"] != "minimum_budget"]}
    narrowed = copy.deepcopy(document["setups"][0])
    narrowed["recipe"]["train"]["neuroflux"]["head"].update(filters=32, depth=2, pool_to=4)
    narrowed["recipe"]["train"]["neuroflux"]["max_batch_size"] = 64
    later = {**document, "command": "python -m benchmarks.run --only minimum_budget ablations",
             "comparisons": [o for o in document["comparisons"] if o["name"] in ("minimum_budget", "ablations")],
             "setups": [narrowed]}
    merged = merge_documents(first, [later])
    # ... and its setups replace the same-named ones: the setups table shows what the latest figures ran.
    assert [s["name"] for s in merged["setups"]] == [s["name"] for s in document["setups"]]
    assert merged["setups"][0] is narrowed
    # A later run of the same recipe that measured no budget keeps the earlier run's budgets.
    unmeasured = [{**setup, "budgets": {}} for setup in document["setups"]]
    kept = merge_documents(first, [{**later, "setups": unmeasured}])
    assert [s["budgets"] for s in kept["setups"]] == [s["budgets"] for s in document["setups"]]
    assert all(s["budgets"] for s in kept["setups"])
    assert not any("earlier_recipes" in o for o in kept["comparisons"])  # the same recipe throughout
    # A later run's comparison replaces the earlier one in its place; a new one joins at the end.
    assert [o["name"] for o in merged["comparisons"]] == [o["name"] for o in first["comparisons"]] + ["minimum_budget"]
    assert "run" in merged["comparisons"][2] and "run" not in merged["comparisons"][1]
    text = render_results(merged, "a.json + b.json", also=["b.json"])
    assert "## Goals: does NeuroFlux pay for itself?" in text
    for goal in ("1. accuracy", "2. engine", "3. time to accuracy", "4. where only NeuroFlux trains",
                 "5. smaller deliverable"):
        assert f"| {goal} |" in text, goal
    assert "from a later run: `python -m benchmarks.run --only minimum_budget ablations`" in text
    assert " at the start, " in text and " at the end)" in text  # a later run's load, at both ends
    assert "--also b.json" in text
    assert "| 2 convs, up to 32 filters, maps pooled to 4x4 | 64 |" in text  # the setup's heads and batch cap
    # The earlier run's comparisons of that setup ran another recipe than the table shows, and say so.
    name = narrowed["name"]
    changed = recipe_differences(document["setups"][0]["recipe"], narrowed["recipe"])
    assert "train.neuroflux.head.pool_to" in changed
    earlier = {o["name"]: o.get("earlier_recipes") for o in merged["comparisons"]}
    assert earlier["time_to_accuracy"] == {name: changed}
    assert earlier["minimum_budget"] is None and earlier["ablations"] is None  # the later run's own
    assert f"**Earlier recipe:** {name} ran with other {', '.join(f'`{f}`' for f in changed)} than" in text
    assert f"| 3. time to accuracy | {name} (run under an earlier recipe) at the " in text
    assert f"| 4. where only NeuroFlux trains | {name}: smallest budget" in text


def test_a_comparison_is_flagged_against_the_latest_recipe_of_the_setups_it_ran():
    from benchmarks.report import merge_documents

    def run(command, epochs, *names):
        machine = {"load_average": [0.1, 0.1, 0.1]}
        outcomes = [{"name": n, "status": "ok", "result": {"setups": [{"setup": "s"}]}} for n in names]
        return {"command": command, "started": command, "machine": machine, "comparisons": outcomes,
                "setups": [{"name": "s", "recipe": {"train": {"epochs": epochs}}, "budgets": {}},
                           {"name": "t", "recipe": {"train": {"epochs": epochs}}, "budgets": {}}]}

    # B replaces A's time_to_accuracy at the same recipe; C changes the recipe and runs only deliverable.
    merged = merge_documents(run("a", 5, "time_to_accuracy", "deliverable"),
                             [run("b", 5, "time_to_accuracy"), run("c", 3, "deliverable")])
    flags = {o["name"]: (o["run"]["command"], o.get("earlier_recipes")) for o in merged["comparisons"]}
    assert flags == {"time_to_accuracy": ("b", {"s": ["train.epochs"]}), "deliverable": ("c", None)}


def test_recipe_changes_name_what_a_run_ran_otherwise():
    from benchmarks.report import earlier_recipe_note, recipe_changes
    from nfcompile.recipe.schema import Recipe

    later = Recipe(name="r").model_dump(mode="json", by_alias=True)
    later["train"]["neuroflux"]["slim_heads"]["share"] = 0.5
    earlier = copy.deepcopy(later)
    earlier["train"]["neuroflux"]["slim_heads"]["share"] = None
    earlier["train"]["neuroflux"]["head"]["filters"] = 8
    assert recipe_changes(earlier, later, selects_exits=False) == ["train.neuroflux.head.filters",
                                                                   "train.neuroflux.slim_heads.share"]
    assert recipe_changes(later, later, selects_exits=True) == []
    # A run that predates a field ran it at its default (no head epochs) ...
    del earlier["train"]["neuroflux"]["head_epochs"], earlier["train"]["neuroflux"]["slim_heads"]
    assert recipe_changes(earlier, later, selects_exits=False) == ["train.neuroflux.head.filters",
                                                                   "train.neuroflux.slim_heads.share"]
    # ... except select.confidence (selection judged the accuracies as measured), which matters only where
    # the figures depend on the exit selection ships.
    del earlier["select"]["confidence"]
    assert "select.confidence" in recipe_changes(earlier, later, selects_exits=True)
    assert "select.confidence" not in recipe_changes(earlier, later, selects_exits=False)
    note = earlier_recipe_note({"a": ["x.y"], "b": ["x.y"], "c": ["z"]})
    assert note == ("a and b ran with other `x.y` than the setups table shows; "
                    "c ran with other `z` than the setups table shows")


def test_the_head_width_ablation_runs_only_where_a_setup_narrows_its_heads():
    from benchmarks.comparisons.ablations import ABLATIONS, _applies
    from benchmarks.config import RESNET18_FMNIST, VGG16_FMNIST

    (head_width,) = [a for a in ABLATIONS if a.name == "head_width"]
    config = quick_config()
    assert _applies(head_width, RESNET18_FMNIST, config) and not _applies(head_width, VGG16_FMNIST, config)
    assert head_width.overrides == ("train.neuroflux.head.filters=64",) and head_width.selects_exit


def test_the_batch_cap_128_ablation_runs_only_where_a_setup_caps_block_batches():
    from benchmarks.comparisons.ablations import ABLATIONS, _applies
    from benchmarks.config import RESNET18_DIGITS, RESNET18_FMNIST, VGG16_FMNIST

    (cap,) = [a for a in ABLATIONS if a.name == "batch_cap_128"]
    config = quick_config()
    assert _applies(cap, RESNET18_FMNIST, config) and _applies(cap, VGG16_FMNIST, config)
    assert not _applies(cap, RESNET18_DIGITS, config)
    assert cap.overrides == ("train.neuroflux.max_batch_size=128",) and cap.every_budget


def test_the_block_epochs_ablation_runs_only_where_a_setup_shortens_its_first_blocks():
    from benchmarks.comparisons.ablations import ABLATIONS, _applies
    from benchmarks.config import RESNET18_FMNIST, VGG16_FMNIST
    from benchmarks.workbench import setup_recipe

    (epochs,) = [a for a in ABLATIONS if a.name == "block_epochs"]
    config = quick_config()
    assert _applies(epochs, RESNET18_FMNIST, config) and not _applies(epochs, VGG16_FMNIST, config)
    # The variant trains every block train.epochs.
    assert setup_recipe(config, RESNET18_FMNIST).train.neuroflux.block_epochs == (3, 3)
    assert setup_recipe(config, RESNET18_FMNIST, epochs.overrides).train.neuroflux.block_epochs == ()


def test_the_slim_heads_and_head_epochs_ablations_run_where_a_setup_ships_slim_heads():
    from benchmarks.comparisons.ablations import ABLATIONS, _applies
    from benchmarks.config import RESNET18_DIGITS, RESNET18_FMNIST, VGG16_FMNIST
    from benchmarks.workbench import setup_recipe

    (slim,) = [a for a in ABLATIONS if a.name == "slim_heads"]
    (heads,) = [a for a in ABLATIONS if a.name == "head_epochs"]
    config = quick_config()
    for ablation in (slim, heads):
        assert ablation.selects_exit
        assert _applies(ablation, VGG16_FMNIST, config) and _applies(ablation, RESNET18_FMNIST, config)
        assert not _applies(ablation, RESNET18_DIGITS, config)
    assert slim.every_budget and not heads.every_budget
    default = setup_recipe(config, VGG16_FMNIST).train.neuroflux
    assert (default.slim_heads.share, default.head_epochs) == (0.5, 0)
    assert setup_recipe(config, VGG16_FMNIST, slim.overrides).train.neuroflux.slim_heads.share is None
    assert setup_recipe(config, VGG16_FMNIST, heads.overrides).train.neuroflux.head_epochs == 1


@pytest.mark.parametrize(("name", "field", "setup_value", "variant_value"),
                         [("slim_head_epochs", "epochs", 40, 10), ("slim_head_batch", "batch_size", 128, 64)])
def test_the_slim_head_schedule_ablations_run_only_where_a_setup_sets_them(name, field, setup_value, variant_value):
    from benchmarks.comparisons.ablations import ABLATIONS, _applies
    from benchmarks.config import RESNET18_FMNIST, VGG16_FMNIST
    from benchmarks.workbench import setup_recipe

    (ablation,) = [a for a in ABLATIONS if a.name == name]
    config = quick_config()
    assert ablation.selects_exit
    assert _applies(ablation, RESNET18_FMNIST, config) and not _applies(ablation, VGG16_FMNIST, config)
    assert getattr(setup_recipe(config, RESNET18_FMNIST).train.neuroflux.slim_heads, field) == setup_value
    changed = setup_recipe(config, RESNET18_FMNIST, ablation.overrides).train.neuroflux.slim_heads
    assert getattr(changed, field) == variant_value


def test_contenders_that_differ_only_in_what_the_planner_does_not_read_share_one_plan():
    from benchmarks.config import RESNET18_FMNIST
    from benchmarks.workbench import plan_key, setup_recipe

    config = quick_config()
    def key(*overrides):
        return plan_key(setup_recipe(config, RESNET18_FMNIST, overrides))

    assert key() == key("train.neuroflux.block_epochs=[]") == key("train.neuroflux.head_epochs=2") == key(
        "train.neuroflux.slim_heads.epochs=3")
    # The slim heads' share and batch size their phase, which counts in a block's planned peak.
    differing = ["train.neuroflux.max_batch_size=32", "train.neuroflux.slim_heads.share=0.25",
                 "train.neuroflux.slim_heads.share=null", "train.neuroflux.slim_heads.batch_size=64"]
    assert len({key(), *(key(o) for o in differing)}) == 1 + len(differing)


def test_the_setups_table_gives_the_first_blocks_own_epochs_capped_by_train_epochs():
    from benchmarks.report import _epochs

    assert _epochs({"epochs": 5, "neuroflux": {"block_epochs": [3, 3]}}) == "5 (first blocks 3/3)"
    assert _epochs({"epochs": 2, "neuroflux": {"block_epochs": [3, 1]}}) == "2 (first blocks 2/1)"
    # Results files from before the field: every block train.epochs.
    assert _epochs({"epochs": 5, "neuroflux": {}}) == "5"
    assert _epochs({"epochs": 5, "neuroflux": {"head_epochs": 1}}) == "5, then 1 of the heads alone"


def test_the_batch_cap_32_ablation_runs_only_where_blocks_may_train_above_32():
    from benchmarks.comparisons.ablations import ABLATIONS, _applies
    from benchmarks.config import RESNET18_DIGITS, RESNET18_FMNIST, VGG16_FMNIST

    (cap,) = [a for a in ABLATIONS if a.name == "batch_cap"]
    # ResNet on Fashion-MNIST caps at 64, the digits setups at the base recipe's 128, VGG at 32 already.
    config = quick_config()
    assert _applies(cap, RESNET18_FMNIST, config) and _applies(cap, RESNET18_DIGITS, config)
    assert not _applies(cap, VGG16_FMNIST, config)


def test_scaling_trains_one_and_two_processes_at_the_same_global_batch(suite_run):
    from benchmarks.comparisons.scaling import render

    _, _, document = suite_run
    result = _results(document)["scaling"]
    (one,), (two,) = result["runs"]["1"], result["runs"]["2"]
    assert (one["world_size"], two["world_size"]) == (1, 2) and one["seed"] == two["seed"]
    assert len(two["rank_cpu_seconds"]) == 2 and two["weights_identical"] is True
    assert len(one["blocks"]) == len(two["blocks"]) == len(result["global_batches"]) >= 2
    for block_one, block_two, global_batch in zip(one["blocks"], two["blocks"], result["global_batches"]):
        # Same global batch: the two ranks split the one process's batch, over the same samples.
        assert block_one["global_batch"] == block_two["global_batch"] == global_batch
        assert block_one["per_rank_batch"] == 2 * block_two["per_rank_batch"]
        assert block_one["samples"] == block_two["samples"] == result["train_samples"] * block_one["epochs"]
        assert block_two["samples_per_second"] == pytest.approx(block_two["samples"] / block_two["train_seconds"])
    assert result["ratio"] == [pytest.approx(two["samples_per_second"] / one["samples_per_second"])]
    text = render(result)
    assert "| all blocks |" in text and "CUDA/NCCL: not measured" in text


def test_learning_rate_picks_each_methods_rate_on_validation(suite_run):
    from benchmarks.comparisons.learning_rate import gap_at_picked_rates

    _, _, document = suite_run
    (entry,) = _results(document)["learning_rate"]["setups"]
    rows = {(r["method"], r["factor"]): r for r in entry["rows"] if r["fits"]}
    assert {("neuroflux", 1), ("neuroflux", 2)} <= set(rows)
    assert rows[("neuroflux", 2)]["lr"] == pytest.approx(2 * rows[("neuroflux", 1)]["lr"])
    for method, factor in entry["picked_factor"].items():
        # The pick is the validation winner, whatever the test split says.
        assert rows[(method, factor)]["val_accuracy"] == max(r["val_accuracy"] for (m, _), r in rows.items()
                                                             if m == method)
    if set(entry["picked_factor"]) == {"neuroflux", "backprop"}:
        picked = {m: rows[(m, f)]["test_accuracy"] for m, f in entry["picked_factor"].items()}
        assert gap_at_picked_rates(entry) == pytest.approx(picked["neuroflux"] - picked["backprop"])
        # Goal 1 is also read at the picked rates, beside the recipe's rate.
        from benchmarks.goals import render_goals

        row = next(line for line in render_goals(document).splitlines() if "validation picked for it" in line)
        assert f"{gap_at_picked_rates(entry) * 100:+.2f} pt" in row


def test_scaling_runs_nccl_only_on_cuda_with_two_gpus():
    from benchmarks.comparisons.scaling import backend_for

    assert backend_for("cpu", 0) == backend_for("cpu", 8) == "gloo"
    assert backend_for("cuda", 0) is None and backend_for("cuda:0", 1) is None
    assert backend_for("cuda", 2) == backend_for("cuda", 8) == "nccl"


def test_the_batch_layout_check_holds_the_nchw_gradient_to_its_float64_reference():
    from benchmarks.batch_layout import crash_check

    # NCHW is the control: it must finish and match the hand-computed gradient, or the check
    # that flags NHWC as wrong or crashing would be judging against a broken reference.
    check = crash_check(1, "nchw")
    assert check["exit_code"] == 0 and check["worst_relative_error"] < 1e-5, check


def test_the_suites_thread_count_holds_for_numpys_blas_too():
    import numpy  # noqa: F401  (loads its BLAS)
    from threadpoolctl import threadpool_info

    from benchmarks.run import blas_threads

    assert [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    with blas_threads(1):
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {1}
