"""Stage results round-trip through JSON and are validated on the way back in: a stale or hand-edited
state file is an error naming the file and the field, never a half-right result a resume would trust."""

from __future__ import annotations

import json

import pytest

from nfcompile.core.results import BlockResult, EpochRecord, Latency, StageRecord, TrainResult
from nfcompile.errors import InputError


def _train_result() -> TrainResult:
    history = (EpochRecord(epoch=1, lr=0.1, train_loss=(1.2, 0.9), val_accuracy=(0.5, 0.6), seconds=1.0),)
    block = BlockResult(index=0, units=(0, 1), batch_size=32, trained=True, stop_reason="epochs", epochs_run=1,
                        best_val_accuracy=(0.5, 0.6), measured_peak_bytes=1000, predicted_peak_bytes=990,
                        budget_bytes=2000, seconds=1.0, cache_placement="device", cache_bytes=10,
                        cache_seconds=0.1, history=history)
    return TrainResult(method="neuroflux", device="cpu", budget_bytes=2000, checkpoint="checkpoint.pt",
                       blocks=(block,), exit_units=(0, 1), exit_val_accuracy=(0.5, 0.6), seconds=1.0,
                       details={"head_filters": [8, 16]})


def test_nested_results_round_trip_through_json():
    result = _train_result()
    assert TrainResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["blocks"][0].update(batch_size="many"), "blocks.0.batch_size"),
    (lambda d: d.pop("exit_units"), "exit_units"),
    (lambda d: d["blocks"][0]["history"][0].update(stale_field=1), "blocks.0.history.0.stale_field"),
    (lambda d: d.update(blocks={"0": 1}), "blocks"),
])
def test_an_edited_result_is_refused_naming_the_field(edit, field):
    data = _train_result().to_dict()
    edit(data)
    with pytest.raises(InputError) as caught:
        TrainResult.from_dict(data, source="state/train.json")
    assert "state/train.json" in str(caught.value) and field in str(caught.value)


def test_a_stage_record_gives_its_result_typed():
    record = StageRecord("score", "ok", "", 1.0, (), "fp", Latency(1, 1.0, 2.0, 1.5, 5, 2).to_dict())
    assert record.result_as(Latency) == Latency(1, 1.0, 2.0, 1.5, 5, 2)
    assert StageRecord("prune", "skipped", "off", 0.0, (), "fp", None).result_as(Latency) is None
