"""Files from elsewhere (weights, checkpoints, reference arrays, recipes) are read as data, never as
code. Crafted weights refused at `check` and `build` time, with the marker never written, are in
test_bad_inputs.py; here every loader in the source is checked, and the real loads are watched."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import yaml

import nfcompile
from nfcompile.recipe.load import _RecipeLoader

from reliability.helpers import cli_main, partial_from_bundle

SOURCE = Path(nfcompile.__file__).parent
SAFE_YAML_LOADERS = {"_RecipeLoader", "SafeLoader", "CSafeLoader"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _keyword(call: ast.Call, name: str):
    found = next((k.value for k in call.keywords if k.arg == name), None)
    if isinstance(found, ast.Constant):
        return found.value
    return _dotted(found) if found is not None else None


def unsafe_loads(path: Path, root: Path = SOURCE.parent) -> list[str]:
    """Calls in ``path`` that could run code from a file: pickle without an allow-list, torch.load
    without weights_only=True, np.load with pickles allowed, YAML beyond the safe loader, eval/exec."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{path.relative_to(root)}:{node.lineno} {name}"
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "eval", "exec", "yaml.unsafe_load",
                    "yaml.full_load", "torch.jit.load", "dill.load", "joblib.load"):
            found.append(where)
        elif name.endswith(("torch.load", "load_state_dict_from_url")):
            if _keyword(node, "weights_only") is not True:
                found.append(where)
        elif name in ("np.load", "numpy.load"):
            if _keyword(node, "allow_pickle") is not False:
                found.append(where)
        elif name == "yaml.load" and str(_keyword(node, "Loader")).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
            found.append(where)
    return found


def test_no_loader_in_the_source_can_run_code_from_a_file():
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 40
    assert [where for path in files for where in unsafe_loads(path)] == []
    assert issubclass(_RecipeLoader, yaml.SafeLoader)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The scan above is only worth something if it flags the unsafe forms."""
    sample = tmp_path / "sample.py"
    sample.write_text("import pickle, torch, numpy as np, yaml\n"
              "pickle.loads(b'')\ntorch.load('x')\ntorch.load('x', weights_only=False)\nnp.load('x')\n"
              "np.load('x', allow_pickle=True)\nyaml.load('a', Loader=yaml.Loader)\neval('1')\n"
              "torch.load('x', weights_only=True)\nnp.load('x', allow_pickle=False)\n"
              "yaml.load('a', Loader=yaml.SafeLoader)\n", encoding="utf-8")
    flagged = unsafe_loads(sample, tmp_path)
    assert [line.split()[0].rsplit(":", 1)[1] for line in flagged] == ["2", "3", "4", "5", "6", "7", "8"]


@pytest.fixture
def torch_loads(monkeypatch) -> list[dict]:
    """Every torch.load call made while the test runs, with its keyword arguments."""
    calls = []
    real = torch.load

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    return calls


def test_weights_and_checkpoints_are_loaded_weights_only(monkeypatch, capsys, tmp_path, torch_loads, workspace,
                                                        reference_bundle):
    # A weights file given as model.pretrained, read by `check`...
    from nfcompile.models import build_unit_net
    from nfcompile.recipe.schema import ModelSection

    torch.save(build_unit_net(ModelSection(arch="resnet18", width=0.25), 10).state_dict(), tmp_path / "w.pt")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: q\ndevice: cpu\nmodel: {{arch: resnet18, width: 0.25, "
                      f"pretrained: {tmp_path / 'w.pt'}}}\n")
    code, _, err = cli_main(monkeypatch, capsys, "-q", "check", str(recipe))
    assert code == 0, err
    assert len(torch_loads) == 1
    # ... and the training checkpoint, read back when a build resumes after training.
    partial_from_bundle(reference_bundle, tmp_path / "out", "export")
    code, out, err = cli_main(monkeypatch, capsys, "-q", "build", str(workspace / "recipe.yaml"),
                              "--out", str(tmp_path / "out"), "--resume", "--json")
    assert code == 0, err
    assert json.loads(out)["chosen_exit"] is not None
    assert len(torch_loads) > 1
    assert all(call.get("weights_only") is True for call in torch_loads), torch_loads
