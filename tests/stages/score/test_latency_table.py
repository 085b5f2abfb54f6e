"""Latency tables: emitted from a run's exits, read back by scoring, refused when they do not fit."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_data, make_tiny_multi_exit

from nfcompile.core.io import sha256_file
from nfcompile.errors import InputError
from nfcompile.recipe.schema import BenchSection, ExportSection
from nfcompile.stages.score import EXITS_DIR, emit_latency_table, read_latency_table, score_exits

EXPORT = ExportSection(exporter="torchscript")
BENCH = BenchSection(warmup=1, repeats=3, batch_sizes=(1, 4))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A scored run (exits 0 and 1; the full model on its own) and the table emitted from it."""
    run_dir = tmp_path_factory.mktemp("run")
    net, data = make_tiny_multi_exit(), make_tiny_data()
    score_exits(net, [0, 1], data.test, data.preprocessing, bench=BENCH, export=EXPORT, out_dir=run_dir,
                device=torch.device("cpu"))
    table_path = run_dir.parent / f"{run_dir.name}-table.json"
    table = emit_latency_table(run_dir / EXITS_DIR, table_path, BENCH)
    return net, data, run_dir, table_path, table


def _score_with_table(run, table_path, **bench):
    net, data, run_dir, _, _ = run
    section = BenchSection(**{**BENCH.model_dump(), "table": table_path, **bench})
    return score_exits(net, [0, 1], data.test, data.preprocessing, bench=section, export=EXPORT,
                       out_dir=run_dir, device=torch.device("cpu"))


def test_the_table_times_every_onnx_in_the_exits_folder(run):
    _, _, run_dir, table_path, table = run
    assert sorted(table.exits) == ["exit_00", "exit_01", "full"]
    for name, entry in table.exits.items():
        onnx = run_dir / EXITS_DIR / f"{name}.onnx"
        assert entry.onnx_sha256 == sha256_file(onnx) and entry.onnx_bytes == onnx.stat().st_size
        assert [lat.batch_size for lat in entry.latency] == [1, 4]
        assert all(lat.p50_ms > 0 and (lat.runs, lat.warmup) == (3, 1) for lat in entry.latency)
    assert table.backend == "ort-cpu" and table.device["cpu_count"]
    assert read_latency_table(table_path) == table


def test_scoring_from_the_table_uses_its_numbers_not_new_ones(run):
    _, _, _, table_path, table = run
    scores = _score_with_table(run, table_path)
    for score in [*scores.exits, scores.full_model]:
        assert score.latency == table.exits[score.name].latency
        assert score.latency_source.startswith(f"table: {table_path} (ort-cpu on ")


def _edited_table(run, tmp_path, edit):
    document = json.loads(run[3].read_text())
    edit(document)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(document))
    return path


def test_a_table_timed_on_another_onnx_is_refused(run, tmp_path):
    path = _edited_table(run, tmp_path, lambda d: d["exits"]["exit_01"].update(onnx_sha256="ab" * 32))
    with pytest.raises(InputError, match=r"exit_01 was timed on an ONNX with sha256 abab.*emit-table"):
        _score_with_table(run, path)


def test_a_table_without_a_batch_size_is_refused(run):
    with pytest.raises(InputError, match="exit_00 has no latency at batch size 8 .it has 1, 4."):
        _score_with_table(run, run[3], batch_sizes=(1, 8))


def test_a_table_without_an_exit_is_refused(run, tmp_path):
    path = _edited_table(run, tmp_path, lambda d: d["exits"].pop("full"))
    with pytest.raises(InputError, match="no entry for full .it has exit_00, exit_01."):
        _score_with_table(run, path)


def test_a_table_from_another_backend_is_refused(run):
    with pytest.raises(InputError, match="timed on ort-cpu, but bench.backend is ort-cuda"):
        _score_with_table(run, run[3], backend="ort-cuda")


@pytest.mark.parametrize("document", [{"exits": {}}, [1, 2], {"format": "nfcompile.latency_table/1"}])
def test_a_file_that_is_not_a_table_is_refused(tmp_path, document):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(document))
    with pytest.raises(InputError, match="latency table"):
        read_latency_table(path)


def test_emitting_from_a_folder_without_exits_is_refused(tmp_path):
    with pytest.raises(InputError, match="no exit ONNX files"):
        emit_latency_table(tmp_path, tmp_path / "table.json", BENCH)
