"""The report's charts render for every training method's records."""

from __future__ import annotations

from nfcompile.core.results import BlockPlan, BlockResult, EpochRecord, Plan, TrainResult
from nfcompile.stages.bundle.plots import plot_memory_plan, plot_training

PNG = b"\x89PNG\r\n\x1a\n"


def _block(index: int, units: tuple[int, ...], accuracies_per_epoch: list[tuple[float, ...]]) -> BlockResult:
    history = tuple(EpochRecord(epoch=e + 1, lr=0.1, train_loss=(1.0,) * len(acc), val_accuracy=acc, seconds=1.0)
                    for e, acc in enumerate(accuracies_per_epoch))
    return BlockResult(index=index, units=units, batch_size=32, trained=True, stop_reason="epochs",
                       epochs_run=len(history), best_val_accuracy=history[-1].val_accuracy,
                       measured_peak_bytes=900, predicted_peak_bytes=950, budget_bytes=1000, seconds=2.0,
                       cache_placement="disk", cache_bytes=100, cache_seconds=0.1, history=history)


def _train(method: str, blocks: tuple[BlockResult, ...]) -> TrainResult:
    return TrainResult(method=method, device="cpu", budget_bytes=1000, checkpoint="checkpoint.pt", blocks=blocks,
                       exit_units=tuple(u for b in blocks for u in b.units), exit_val_accuracy=(), seconds=4.0)


def test_training_curves_for_neuroflux_and_backprop(tmp_path):
    neuroflux = _train("neuroflux", (_block(0, (0, 1), [(0.2, 0.3), (0.4, 0.5)]), _block(1, (2,), [(0.6,), (0.7,)])))
    # Backprop trains every unit in one block but records only its final exit's accuracy.
    backprop = _train("backprop", (_block(0, (0, 1, 2), [(0.3,), (0.6,)]),))
    for name, train in (("nf.png", neuroflux), ("bp.png", backprop)):
        assert plot_training(train, tmp_path / name).read_bytes().startswith(PNG)


def test_memory_plan_chart(tmp_path):
    plan = Plan(device="cpu", budget_bytes=1000, budget_source="recipe", min_budget_bytes=100, head_policy="adaptive",
                units=(), blocks=(BlockPlan(0, (0, 1), 32, 950, "disk", 100), BlockPlan(1, (2,), 64, 800, "none", 0)),
                backprop_batch_size=0, backprop_predicted_peak_bytes=2000, backprop_measurements=(),
                checkpointing_batch_size=4, checkpointing_predicted_peak_bytes=990, checkpointing_measurements=(),
                train_samples=100, val_samples=20)
    train = _train("neuroflux", (_block(0, (0, 1), [(0.2, 0.3)]), _block(1, (2,), [(0.6,)])))
    assert plot_memory_plan(plan, train, tmp_path / "plan.png").read_bytes().startswith(PNG)
    assert plot_memory_plan(plan, None, tmp_path / "plan2.png").read_bytes().startswith(PNG)
