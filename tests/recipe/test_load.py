"""Recipe loading: every malformed recipe is one `RecipeError` line naming the file and the field;
`--set` overrides are typed by the schema; the hash and the resolved YAML are stable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO, write_recipe
from nfcompile.errors import RecipeError
from nfcompile.recipe import Recipe, load_recipe, recipe_hash, recipe_yaml, with_overrides

QUICKSTART = REPO / "recipes" / "quickstart.yaml"

# (recipe text, field path the message must name, further text it must contain)
MALFORMED = [
    pytest.param("name: a\nmodle: {}\n", "modle", "did you mean 'model'", id="unknown-key"),
    pytest.param("name: a\ntrain:\n  epoch: 3\n", "train.epoch", "did you mean 'epochs'", id="nested-typo"),
    pytest.param("name: a\ntrain:\n  neuroflux:\n    head: {filtres: 8}\n", "train.neuroflux.head.filtres",
                 "did you mean 'filters'", id="deep-typo"),
    pytest.param("name: a\nvalidation: {atol: 1}\n", "validation", "did you mean 'validate'", id="alias-typo"),
    pytest.param("name: a\ntrain: {epochs: many}\n", "train.epochs", "valid integer", id="wrong-type"),
    pytest.param("name: a\ntrain: {epochs: 2.5}\n", "train.epochs", "fractional", id="float-for-int"),
    pytest.param("name: a\nmodel: resnet18\n", "model", "dictionary", id="scalar-for-section"),
    pytest.param("name: a\ntrain: {epochs: yes}\n", "train.epochs", "true/false", id="yaml-yes-for-int"),
    pytest.param("name: a\nbench: {batch_sizes: [on, 4]}\n", "bench.batch_sizes", "true/false",
                 id="yaml-on-in-list"),
    pytest.param("name: a\nbudget: {memory: -5MiB}\n", "budget.memory", "positive", id="negative-budget"),
    pytest.param("name: a\nbudget: {memory: 0}\n", "budget.memory", "positive", id="zero-budget"),
    pytest.param("name: a\nbudget: {memory: 5XB}\n", "budget.memory", "unknown size unit 'XB'", id="bad-unit"),
    pytest.param("name: a\ntensorrt: {workspace: 1 parsec}\n", "tensorrt.workspace", "unknown size unit",
                 id="bad-unit-workspace"),
    pytest.param("name: a\nmodel: {pretrained: /nope.pt}\n", "model.pretrained", "'/nope.pt' does not exist",
                 id="missing-weights"),
    pytest.param("name: a\nbench: {table: /nope/latency.json}\n", "bench.table", "does not exist",
                 id="missing-table"),
    pytest.param("name: a\ntensorrt: {timing_cache: /nope.cache}\n", "tensorrt.timing_cache", "does not exist",
                 id="missing-timing-cache"),
    pytest.param("name: ../evil\n", "name", "'../evil'", id="path-in-name"),
    pytest.param("seed: 1\n", "name", "required", id="no-name"),
    pytest.param("name: a\nseed: -1\n", "seed", "greater than or equal to 0", id="negative-seed"),
    pytest.param("name: a\ntensorrt: {precision: int8}\nquantize: {enabled: false}\n", "tensorrt.precision",
                 "quantize.enabled", id="int8-without-quantize"),
    pytest.param("name: a\ntensorrt: {min_batch: 16, opt_batch: 8, max_batch: 4}\n", "tensorrt",
                 "min_batch <= opt_batch <= max_batch", id="min-batch-over-max"),
    pytest.param("name: a\ndata: {val_fraction: 0.45, test_fraction: 0.4}\n",
                 "data.val_fraction + data.test_fraction", "too little to train", id="fractions-too-big"),
    pytest.param("name: a\ndata: {download: true}\n", "data.download", "'digits'", id="download-digits"),
    pytest.param("name: a\nselect: {min_accuracy: 95}\n", "select.min_accuracy", "fraction", id="percent-not-fraction"),
    pytest.param("name: a\nselect: {latency_batch_size: 4}\n", "select.latency_batch_size",
                 "bench.batch_sizes", id="latency-batch-not-benched"),
    pytest.param("name: a\ntrain: {method: gradient_filter}\n", "train.method", "model.pretrained",
                 id="gradient-filter-untrained"),
    pytest.param("name: a\ntrain: {neuroflux: {profile_batch_sizes: [4, 4]}}\n",
                 "train.neuroflux.profile_batch_sizes", "two different", id="one-profile-size"),
    pytest.param("name: a\ntrain: {neuroflux: {head: {filters: 8, min_filters: 16}}}\n",
                 "train.neuroflux.head", "min_filters", id="head-range"),
    pytest.param("name: a\ndata: {std: [0.2, 0.2, 0]}\n", "data.std.2", "greater than 0", id="zero-std"),
    pytest.param("name: a\nprune: {baselines: [drive]}\n", "prune.baselines.0", "'drive'", id="bad-literal"),
]


def _error(path: Path, overrides: tuple[str, ...] = ()) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value


def _assert_one_line(error: RecipeError, path: Path) -> str:
    text = str(error)
    assert "\n" not in text, text
    assert str(path) in text
    assert error.exit_code == 2
    return text


@pytest.mark.parametrize("text, field, fragment", MALFORMED)
def test_malformed_recipe_is_one_line_naming_file_and_field(tmp_path, text, field, fragment):
    path = write_recipe(tmp_path, text)
    message = _assert_one_line(_error(path), path)
    assert f"{field}:" in message or f"{field} " in message, message
    assert fragment in message, message


def test_misspelled_key_lists_the_allowed_names(tmp_path):
    error = _error(write_recipe(tmp_path, "name: a\ntrain:\n  epoch: 3\n"))
    assert "epochs" in error.hint and "neuroflux" in error.hint and "budget" not in error.hint


@pytest.mark.parametrize("text, line", [
    pytest.param("name: a\nmodel:\n arch: a\n  width: 2\n", 4, id="indentation"),
    pytest.param("name: a\nmodel: {arch: [resnet18}\n", 2, id="unclosed-bracket"),
    pytest.param("name: a\n\tseed: 1\n", 2, id="tab"),
    pytest.param("name: a\nseed: 1\nname: b\n", 3, id="duplicate-key"),
])
def test_bad_yaml_names_the_line(tmp_path, text, line):
    path = write_recipe(tmp_path, text)
    message = _assert_one_line(_error(path), path)
    assert "invalid YAML" in message and f"line {line}," in message, message


def test_duplicate_key_names_both_lines(tmp_path):
    message = str(_error(write_recipe(tmp_path, "name: a\ntrain:\n  epochs: 2\n  lr: 0.1\n  epochs: 3\n")))
    assert "duplicate key 'epochs'" in message and "line 5" in message and "line 3" in message, message


def test_merge_keys_may_still_be_overridden(tmp_path):
    path = write_recipe(tmp_path, "name: a\ntrain:\n  <<: {epochs: 3, lr: 0.2}\n  epochs: 4\n")
    recipe = load_recipe(path)
    assert recipe.train.epochs == 4 and recipe.train.lr == 0.2


def test_yaml_python_tags_are_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = write_recipe(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    message = _assert_one_line(_error(path), path)
    assert "invalid YAML" in message
    assert not marker.exists()


def _write_bytes(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, fragment", [
    pytest.param(lambda tmp: _write_bytes(tmp, b""), "empty", id="empty-file"),
    pytest.param(lambda tmp: _write_bytes(tmp, b"# only a comment\n"), "empty", id="comment-only"),
    pytest.param(lambda tmp: _write_bytes(tmp, b"- name: a\n- seed: 1\n"), "got a list", id="top-level-list"),
    pytest.param(lambda tmp: _write_bytes(tmp, b"quickstart\n"), "got a string", id="top-level-string"),
    pytest.param(lambda tmp: _write_bytes(tmp, b"name: caf\xe9\n"), "not UTF-8", id="latin-1-bytes"),
    pytest.param(lambda tmp: tmp, "is a folder", id="folder"),
    pytest.param(lambda tmp: tmp / "absent.yaml", "not found", id="missing-file"),
])
def test_unreadable_recipe_file(tmp_path, make, fragment):
    path = make(tmp_path)
    message = _assert_one_line(_error(path), path)
    assert fragment in message, message


# --------------------------------------------------------------------------- --set overrides


@pytest.fixture
def plain_recipe(tmp_path) -> Path:
    return write_recipe(tmp_path, "name: plain\n")


@pytest.mark.parametrize("override, read, expected", [
    ("train.epochs=2", lambda r: r.train.epochs, 2),
    ("train.lr=1e-3", lambda r: r.train.lr, 0.001),
    ("model.small_input=false", lambda r: r.model.small_input, False),
    ("model.arch=vgg11_bn", lambda r: r.model.arch, "vgg11_bn"),
    ("bench.batch_sizes=[1, 4]", lambda r: r.bench.batch_sizes, (1, 4)),
    ("budget.memory=96MiB", lambda r: r.budget.memory_bytes, 96 * 2**20),
    ("data.max_train_samples=null", lambda r: r.data.max_train_samples, None),
    ("train.neuroflux.head.filters=32", lambda r: r.train.neuroflux.head.filters, 32),
    ("validate.atol=0.5", lambda r: r.validation.atol, 0.5),
])
def test_override_is_typed_by_the_schema(plain_recipe, override, read, expected):
    value = read(load_recipe(plain_recipe, [override]))
    assert value == expected and type(value) is type(expected)


def test_overrides_apply_in_order_over_the_file(tmp_path):
    path = write_recipe(tmp_path, "name: a\ntrain: {epochs: 5, lr: 0.2}\n")
    recipe = load_recipe(path, ["train.epochs=2", "train.epochs=3"])
    assert recipe.train.epochs == 3 and recipe.train.lr == 0.2


@pytest.mark.parametrize("override, field, fragment", [
    ("train.epochs=abc", "train.epochs", "valid integer"),
    ("train.epochs=0", "train.epochs", "greater than 0"),
    ("budget.memory=-1GiB", "budget.memory", "positive"),
    ("seed.x=1", "seed.x", "seed is a value, not a section"),
    ("train.epochs.x=1", "train.epochs.x", "train.epochs is a value"),
    ("train.epoch=3", "train.epoch", "did you mean 'epochs'"),
    ("trian.epochs=3", "trian", "did you mean 'train'"),
    ("train=3", "train", "dictionary"),
    ("train.epochs", "train.epochs", "section.field=value"),
    ("=3", "--set =3", "section.field=value"),
    ("train..epochs=3", "train..epochs", "empty name"),
])
def test_bad_override_names_the_field(plain_recipe, override, field, fragment):
    message = _assert_one_line(_error(plain_recipe, (override,)), plain_recipe)
    assert field in message and fragment in message, message


# --------------------------------------------------------------------------- identity


def test_defaults_alone_make_a_valid_recipe(plain_recipe):
    recipe = load_recipe(plain_recipe)
    assert recipe == Recipe.model_validate({"name": "plain"})
    assert recipe.data.dataset == "digits" and recipe.budget.memory == "auto"


def test_quickstart_recipe_loads():
    recipe = load_recipe(QUICKSTART)
    assert recipe.name == "quickstart" and recipe.data.dataset == "digits"
    assert recipe.budget.memory_bytes == 48 * 2**20


def test_hash_is_stable_and_tracks_every_field(tmp_path):
    first = write_recipe(tmp_path, "name: a\nbudget: {memory: 48MiB}\ntrain: {epochs: 3, lr: 0.1}\n", "a.yaml")
    # The same settings, written differently: key order, bytes instead of MiB, a default spelled out.
    same = write_recipe(tmp_path, "train: {lr: 0.1, epochs: 3}\nseed: 0\nbudget: {memory: 50331648}\nname: a\n",
                        "b.yaml")
    digest = recipe_hash(load_recipe(first))
    assert re.fullmatch("[0-9a-f]{64}", digest)
    assert recipe_hash(load_recipe(first)) == digest
    assert recipe_hash(load_recipe(same)) == digest
    changed = {recipe_hash(load_recipe(first, [override])) for override in
               ("train.epochs=4", "budget.memory=49MiB", "seed=1", "validate.atol=0.001", "name=b")}
    assert digest not in changed and len(changed) == 5


@pytest.mark.parametrize("text", [
    pytest.param(None, id="quickstart"),
    pytest.param("name: full\nmodel: {arch: vgg11_bn, width: 0.5}\ndata: {dataset: cifar10, root: data/cifar, "
                 "mean: [0.5, 0.5, 0.5]}\nbudget: {memory: 1.5GiB}\ntrain: {neuroflux: {profile_batch_sizes: "
                 "[32, 2, 8]}}\nbench: {table: TABLE}\nvalidate: {samples: 64}\n", id="paths-tuples-alias"),
])
def test_resolved_yaml_reloads_to_an_equal_recipe(tmp_path, text):
    if text is None:
        source = QUICKSTART
    else:
        table = write_recipe(tmp_path, "{}", "latency.json")
        source = write_recipe(tmp_path, text.replace("TABLE", str(table)), "source.yaml")
    recipe = load_recipe(source)
    resolved = write_recipe(tmp_path, recipe_yaml(recipe), "resolved.yaml")
    reloaded = load_recipe(resolved)
    assert reloaded == recipe
    assert recipe_hash(reloaded) == recipe_hash(recipe)
    assert "validate:" in recipe_yaml(recipe) and "validation:" not in recipe_yaml(recipe)


def test_with_overrides_changes_only_the_named_field():
    recipe = load_recipe(QUICKSTART)
    changed = with_overrides(recipe, ["train.epochs=1"])
    assert changed.train.epochs == 1 and recipe.train.epochs == 8
    assert changed.model_copy(update={"train": recipe.train}) == recipe
    with pytest.raises(RecipeError, match="train.epochs"):
        with_overrides(recipe, ["train.epochs=-1"])
