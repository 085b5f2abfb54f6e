"""exits.json, the terminal table and pareto.png: written, parseable, and saying what was chosen."""

from __future__ import annotations

import json

import pytest

import matplotlib.image
from rich.console import Console
from score_sets import exit_score, score_set

from nfcompile.recipe.schema import SelectSection
from nfcompile.stages.select import exits_table, plot_pareto, select_exit, write_exits_json

KB = 1000
ROWS = [("exit_00", 0.60, 100 * KB, 1.0), ("exit_01", 0.90, 200 * KB, 2.0),
        ("exit_02", 0.85, 400 * KB, 4.0), ("exit_03", 0.93, 1000 * KB, 10.0)]
SECTION = SelectSection(policy="smallest_within", within_points=5.0, min_accuracy=0.7, confidence=None)


def test_exits_json_lists_every_exit_with_scores_and_verdict(tmp_path):
    scores = score_set(ROWS)
    selection = select_exit(scores, SECTION)
    path = write_exits_json(scores, selection, tmp_path / "run" / "exits.json")
    document = json.loads(path.read_text())
    assert document["format"] == "nfcompile.exits/1"
    assert [e["name"] for e in document["exits"]] == ["exit_00", "exit_01", "exit_02", "exit_03"]
    by_name = {e["name"]: e for e in document["exits"]}
    assert document["chosen"] == "exit_01" and by_name["exit_01"]["chosen"] is True
    assert sum(e["chosen"] for e in document["exits"]) == 1
    assert by_name["exit_00"]["feasible"] is False and "min_accuracy" in by_name["exit_00"]["why"]
    assert by_name["exit_02"]["on_front"] is False and by_name["exit_02"]["why"].startswith("dominated by exit_01")
    assert by_name["exit_03"]["onnx_bytes"] == 1000 * KB and by_name["exit_03"]["latency"][0]["p50_ms"] == 10.0
    assert document["full_model"]["name"] == "full"
    assert document["vs_full"]["param_reduction"] == selection.vs_full["param_reduction"] == 5.0
    assert document["constraints"]["min_accuracy"] == 0.7
    assert document["latency_batch_size"] == 1


def test_table_shows_every_exit_the_full_model_and_the_comparison():
    scores = score_set(ROWS)
    selection = select_exit(scores, SECTION)
    console = Console(record=True, width=220)
    console.print(exits_table(scores, selection))
    text = console.export_text()
    for name in ("exit_00", "exit_01", "exit_02", "exit_03", "full"):
        assert name in text
    assert "p50 b8" in text and "chosen: smallest ONNX" in text
    assert "exit_01 vs this network's last exit: 5.0x fewer parameters, 5.0x smaller ONNX" in text


def _png_shape(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path).shape


def test_pareto_plot_is_a_two_panel_png(tmp_path):
    scores = score_set(ROWS)
    selection = select_exit(scores, SelectSection(policy="knee", max_latency_ms=5.0, max_size_mb=0.5))
    path = plot_pareto(scores, selection, tmp_path / "pareto.png")
    height, width, _ = _png_shape(path)
    assert width > height  # two panels side by side
    assert not list(tmp_path.glob(".*.tmp")), "atomic write leaves no temporary file"


def test_pareto_plot_marks_an_untrained_full_model_without_accuracy(tmp_path):
    full = exit_score("full", None, 2000 * KB, 20.0, unit=7)
    scores = score_set(ROWS, full=full)
    selection = select_exit(scores, SECTION)
    assert len(_png_shape(plot_pareto(scores, selection, tmp_path / "pareto.png"))) == 3


def test_exits_json_keeps_the_validation_and_the_test_accuracy_apart(tmp_path):
    import dataclasses

    scores = score_set(ROWS)
    # Test accuracies that would choose differently: selection must not see them.
    exits = tuple(dataclasses.replace(e, test_accuracy=1.0 - e.accuracy) for e in scores.exits)
    scores = dataclasses.replace(scores, exits=exits, full_model=dataclasses.replace(exits[-1], name="full"))
    selection = select_exit(scores, SECTION)
    assert selection.chosen == "exit_01"  # as on the validation accuracies alone
    document = json.loads(write_exits_json(scores, selection, tmp_path / "exits.json").read_text())
    by_name = {e["name"]: e for e in document["exits"]}
    assert by_name["exit_01"]["val_accuracy"] == 0.90 and by_name["exit_01"]["test_accuracy"] == pytest.approx(0.10)
    assert "accuracy" not in by_name["exit_01"]
    assert document["vs_full"]["test_accuracy_delta"] == pytest.approx(0.10 - 0.07)
    assert "interleaved" in document["units"]["latency"] and document["latency_rule"]
