"""`nfcompile check`: prints the resolved recipe; a bad recipe is one `error:` line on stderr, exit 2.

One test runs the real command in a subprocess, as a user does. The others call `main()` (what the
console script and `python -m nfcompile` run) in-process, which costs milliseconds instead of the
seconds it takes to import torch again.
"""

from __future__ import annotations

import json
import logging
import sys

import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO, run_cli, write_recipe
from nfcompile.cli import cli, main
from nfcompile.core import log
from nfcompile.recipe import load_recipe, recipe_hash

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


@pytest.fixture(autouse=True)
def keep_logging():
    """The CLI points the `nfcompile` logger at its console; put it back for the other tests."""
    logger = logging.getLogger("nfcompile")
    saved = (logger.handlers[:], logger.level, logger.propagate, log._progress_enabled)
    yield
    logger.handlers[:], logger.level, logger.propagate, log._progress_enabled = saved


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["nfcompile", *args])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _assert_one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_check_quickstart_prints_the_resolved_recipe(monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, "check", str(QUICKSTART))
    assert code == 0, err
    header, _, body = out.partition("\n")
    assert header.startswith(f"# {QUICKSTART}: valid")
    resolved = yaml.safe_load(body)
    # The file's values, and the defaults it leaves out, filled in.
    assert resolved["name"] == "quickstart" and resolved["model"]["width"] == 0.5
    assert resolved["budget"]["memory"] == 48 * 2**20
    assert resolved["train"]["reference_batch_size"] == 64
    assert set(resolved) >= {"model", "data", "budget", "train", "select", "prune", "export", "quantize",
                             "tensorrt", "validate", "bench"}


def test_real_process_bad_recipe_exits_2_with_one_line(tmp_path):
    """`python -m nfcompile`, as a user runs it: exit 2, one line on stderr, nothing on stdout."""
    path = write_recipe(tmp_path, "name: q\ntrain:\n  epoch: 3\n")
    bad = run_cli("check", str(path), cwd=tmp_path, timeout=120)
    assert bad.returncode == 2
    line = _assert_one_error_line(bad.stderr)
    assert str(path) in line and "train.epoch" in line and "did you mean 'epochs'" in line
    assert bad.stdout == ""


@pytest.mark.parametrize("text, overrides, field", [
    pytest.param("name: q\nmodle: {}\n", (), "modle", id="unknown-key"),
    pytest.param("name: q\ntrain: {epochs: many}\n", (), "train.epochs", id="wrong-type"),
    pytest.param("name: q\nbudget: {memory: -5MiB}\n", (), "budget.memory", id="negative-budget"),
    pytest.param("name: q\nbudget: {memory: 5XB}\n", (), "budget.memory", id="bad-unit"),
    pytest.param("name: q\nmodel: {pretrained: /nope.pt}\n", (), "model.pretrained", id="missing-weights"),
    pytest.param("name: q\nmodel:\n arch: a\n  width: 2\n", (), "line 4", id="bad-yaml"),
    pytest.param("", (), "empty", id="empty"),
    pytest.param("name: ../evil\n", (), "name", id="path-in-name"),
    pytest.param("name: q\nselect: {min_accuracy: 95}\n", (), "select.min_accuracy", id="percent"),
    pytest.param("name: q\ndata: {download: true}\n", (), "data.download", id="download-digits"),
    pytest.param("name: q\n", ("train.epochs=abc",), "train.epochs", id="set-wrong-type"),
    pytest.param("name: q\n", ("seed.x=1",), "seed", id="set-into-value"),
    pytest.param("name: q\n", ("train.epoch=2",), "train.epoch", id="set-unknown"),
    # Beyond the schema: what `check` looks up before any training would start.
    pytest.param("name: q\nmodel: {arch: resnet19}\n", (), "model.arch", id="unknown-arch"),
    pytest.param("name: q\nmodel: {arch: vgg11_bn, small_input: false}\ndata: {image_size: 16}\n", (),
                 "data.image_size", id="input-too-small"),
    pytest.param("name: q\ndata: {dataset: cifar10}\n", (), "data.root", id="cifar-without-root"),
    pytest.param("name: q\ndata: {dataset: imagenet22k}\n", (), "data.dataset", id="unknown-dataset"),
])
def test_check_malformed_recipe(monkeypatch, capsys, tmp_path, text, overrides, field):
    path = write_recipe(tmp_path, text)
    sets = [arg for override in overrides for arg in ("--set", override)]
    code, out, err = _main(monkeypatch, capsys, "check", str(path), *sets)
    assert code == 2
    line = _assert_one_error_line(err)
    assert str(path) in line and field in line, line
    assert out == ""


def test_check_missing_dataset_says_where_it_looked(monkeypatch, capsys, tmp_path):
    path = write_recipe(tmp_path, f"name: q\ndata: {{dataset: cifar10, root: {tmp_path / 'cifar'}}}\n")
    code, _, err = _main(monkeypatch, capsys, "check", str(path))
    assert code == 2
    line = _assert_one_error_line(err)
    assert str(tmp_path / "cifar" / "cifar-10-batches-py") in line and "data_batch_1" in line
    assert "cifar-10-python.tar.gz" in line  # the hint: what to put there


def test_check_missing_recipe_file(monkeypatch, capsys, tmp_path):
    code, _, err = _main(monkeypatch, capsys, "check", str(tmp_path / "absent.yaml"))
    assert code == 2
    assert "not found" in _assert_one_error_line(err)


def test_check_set_override_shows_in_the_resolved_recipe(monkeypatch, capsys):
    code, out, _ = _main(monkeypatch, capsys, "check", str(QUICKSTART), "--set", "train.epochs=2",
                         "--set", "budget.memory=96MiB")
    assert code == 0
    resolved = yaml.safe_load(out.partition("\n")[2])
    assert resolved["train"]["epochs"] == 2 and resolved["budget"]["memory"] == 96 * 2**20


def test_check_json_parses():
    result = CliRunner().invoke(cli, ["check", "--json", "--list-archs", str(QUICKSTART)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    recipe = load_recipe(QUICKSTART)
    assert document["recipe_sha256"] == recipe_hash(recipe)
    assert document["recipe"]["name"] == "quickstart" and document["recipe"]["validate"]["atol"] == 1e-4
    assert "resnet18" in document["archs"] and "digits" in document["datasets"]


def test_check_help_lists_its_options():
    result = CliRunner().invoke(cli, ["check", "--help"])
    assert result.exit_code == 0
    assert "--set" in result.output and "--json" in result.output
