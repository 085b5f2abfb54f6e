"""report.md's memory section: every method shows its own run, with predicted, tracked and RSS rise."""

from __future__ import annotations

import dataclasses

from nfcompile.core.results import BlockResult, ExitScore, ExitScores, Latency, TrainResult
from nfcompile.recipe.schema import SelectSection
from nfcompile.stages.bundle.report import _plan_section, _result_section
from nfcompile.stages.select.selection import select_exit

MIB = 2**20


def _block(index: int, batch: int, predicted: int, tracked: int, rss: int) -> BlockResult:
    return BlockResult(index=index, units=tuple(range(9)), batch_size=batch, trained=True, stop_reason="epochs",
                       epochs_run=2, best_val_accuracy=(0.9,), measured_peak_bytes=tracked,
                       predicted_peak_bytes=predicted, budget_bytes=16 * MIB, seconds=1.0, cache_placement="none",
                       cache_bytes=0, cache_seconds=0.0, rss_rise_bytes=rss,
                       measurement="live-tensor tracker over every step")


def _train(method: str, block: BlockResult) -> TrainResult:
    return TrainResult(method=method, device="cpu", budget_bytes=block.budget_bytes, checkpoint="checkpoint.pt",
                       blocks=(block,), exit_units=(8,), exit_val_accuracy=(0.9,), seconds=1.0)


def test_backprop_shows_its_own_batch_prediction_and_measurements_not_the_neuroflux_plan():
    text = "\n".join(_plan_section(None, _train("backprop", _block(0, 5, 10 * MIB, 11 * MIB, 3 * MIB)), None))
    assert "## Memory" in text and "backprop on cpu" in text
    row = next(line for line in text.splitlines() if line.startswith("| 5 |"))
    assert "10.0 MiB" in row and "11.0 MiB" in row and "-9.1%" in row and "3.0 MiB" in row
    assert "Measured: live-tensor tracker over every step" in text
    assert "output cache" not in text  # no NeuroFlux block table


def test_gradient_filtering_without_a_plan_still_reports_its_measured_peak():
    block = _block(0, 32, 0, 7 * MIB, 2 * MIB)
    text = "\n".join(_plan_section(None, _train("gradient_filter", block), None))
    assert "no memory budget" in text and "7.0 MiB" in text


def _exit(name: str, accuracy: float | None, params: int) -> ExitScore:
    latency = (Latency(batch_size=1, p50_ms=params / 1000, p90_ms=params / 900, mean_ms=params / 1000, runs=5,
                       warmup=2),)
    return ExitScore(name=name, unit=int(name[-2:]), accuracy=accuracy, params=params, macs=params * 10,
                     onnx_bytes=params * 4, onnx_sha256="0" * 64, latency=latency, latency_source="hand-made",
                     onnx_file=f"exits/{name}.onnx", test_accuracy=accuracy)


def _result(exits: tuple[ExitScore, ...], full: ExitScore) -> str:
    scores = ExitScores(exits=exits, full_model=full, backend="ort-cpu", test_samples=100, batch_sizes=(1,))
    return "\n".join(_result_section(scores, select_exit(scores, SelectSection(confidence=None))))


def test_the_result_says_what_the_last_exit_is_trained_or_not():
    exits = (_exit("exit_00", 0.90, 1000), _exit("exit_01", 0.91, 4000))
    trained = _result(exits, dataclasses.replace(exits[-1], name="full"))
    assert "same network trained by the same method to its last unit" in trained
    assert "test accuracy -1.00 points" in trained
    # The last blocks skipped (neuroflux.stop_stalled_blocks): the whole network is a size and speed reference only.
    untrained = _result(exits, _exit("exit_02", None, 9000))
    assert "whose last blocks were not trained" in untrained and "same network trained" not in untrained
    assert "test accuracy" not in untrained.split("Against")[-1]
