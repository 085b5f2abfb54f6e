"""report.md's memory section: every method shows its own run, with predicted, tracked and RSS rise."""

from __future__ import annotations

from nfcompile.core.results import BlockResult, TrainResult
from nfcompile.stages.bundle.report import _plan_section

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
