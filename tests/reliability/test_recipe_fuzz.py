"""Random recipe trees, YAML files, `--set` overrides, names and path values fed to the recipe loader
(and to the dataset look-up `check` and `build` do next): each is either a valid recipe or one
error line with exit code 2, never another exception. An accepted name can only name a folder
directly inside the output folder. NFCOMPILE_FUZZ_EXAMPLES sets the examples per test (300)."""

from __future__ import annotations

import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from nfcompile.data import check_data
from nfcompile.errors import NfcompileError, RecipeError
from nfcompile.recipe import Recipe, load_recipe, recipe_yaml
from nfcompile.recipe.load import apply_override, validate_recipe


def _field_paths(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    paths = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        paths.append(key)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            paths += _field_paths(info.annotation, f"{key}.")
    return paths


FIELD_PATHS = _field_paths()
KEYS = sorted({part for path in FIELD_PATHS for part in path.split(".")})

# Values of the kinds YAML produces, plus the awkward ones: huge and negative numbers, NaN and
# infinities, sizes, long and odd strings (NUL bytes, newlines, paths far beyond PATH_MAX).
WORDS = st.sampled_from(["auto", "512MiB", "1e400GiB", "-5MiB", "0", "cpu", "cuda:7", "torchvision:DEFAULT",
                         "resnet18", "digits", "cifar10", "imagefolder", "../../etc", "/", "/dev/null", "a" * 5000,
                         "x\x00y", "line\nbreak", "fp16", "disk", "int8", "é" * 300])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-2, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), WORDS, st.text(max_size=20))
KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.integers(-3, 3))


def _trees(leaves):
    return st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(KEY, inner, max_size=5)), max_leaves=25)


TREES = _trees(SCALARS)


def _guided(model: type[BaseModel]):
    """Mappings that mostly use the schema's own keys at the right depth, so that the values reach the
    field and section validators (file checks, sizes, cross-field rules) instead of stopping at
    "unknown field"; now and then a random key or a random subtree instead."""
    values = {}
    for name, info in model.model_fields.items():
        nested = isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        values[info.alias or name] = st.one_of(_guided(info.annotation), TREES) if nested else \
            st.one_of(SCALARS, WORDS, TREES)
    picked = st.lists(st.sampled_from(sorted(values)), unique=True, max_size=6)
    guided = picked.flatmap(lambda keys: st.fixed_dictionaries({key: values[key] for key in keys}))
    return st.builds(lambda known, extra: {**extra, **known}, guided, st.dictionaries(KEY, TREES, max_size=1))


RECIPES = st.builds(lambda name, body: {**body, **({"name": name} if name is not None else {})},
                    st.one_of(st.none(), st.sampled_from(["fuzz", "a.b-c_1"]), SCALARS),
                    st.one_of(_guided(Recipe), st.dictionaries(KEY, TREES, max_size=8)))
OVERRIDES = st.builds(lambda path, value: f"{path}={value}",
                      st.one_of(st.sampled_from(FIELD_PATHS), st.text(max_size=20)),
                      st.one_of(st.text(max_size=20), SCALARS.map(lambda v: yaml.safe_dump(v).strip())))

FUZZ = settings(max_examples=int(os.environ.get("NFCOMPILE_FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _accepted_or_one_line(call, errors: type[NfcompileError] = RecipeError):
    try:
        return call()
    except errors as error:
        text = str(error)
        assert text and "\n" not in text and "\r" not in text, repr(text)
        assert error.exit_code == 2
        return None


@FUZZ
@given(RECIPES)
def test_random_recipe_trees_are_accepted_or_refused_in_one_line(raw):
    recipe = _accepted_or_one_line(lambda: validate_recipe(raw, source="fuzz.yaml"))
    if recipe is not None:
        # What the loader accepts, it writes back out as a recipe it accepts again, unchanged.
        again = validate_recipe(yaml.safe_load(recipe_yaml(recipe)), source="resolved")
        assert again == recipe


@FUZZ
@given(body=st.dictionaries(KEY, TREES, max_size=6), overrides=st.lists(OVERRIDES, max_size=3))
def test_random_yaml_files_and_overrides_are_accepted_or_refused_in_one_line(tmp_path_factory, body, overrides):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(yaml.safe_dump({"name": "fuzz", **body}, allow_unicode=True), encoding="utf-8")
    _accepted_or_one_line(lambda: load_recipe(path, overrides))


@FUZZ
@given(st.lists(OVERRIDES, min_size=1, max_size=4))
def test_random_overrides_on_a_valid_recipe(overrides):
    def apply():
        raw = {"name": "fuzz"}
        for override in overrides:
            apply_override(raw, override, source="fuzz.yaml")
        return validate_recipe(raw, source="fuzz.yaml")

    _accepted_or_one_line(apply)


@FUZZ
@given(st.one_of(st.text(max_size=70), st.from_regex(r"[A-Za-z0-9./_-]{1,70}", fullmatch=True)))
def test_an_accepted_name_is_a_folder_directly_inside_the_output_folder(tmp_path_factory, name):
    recipe = _accepted_or_one_line(lambda: validate_recipe({"name": name}, source="fuzz.yaml"))
    if recipe is not None:
        out = tmp_path_factory.getbasetemp() / "out"
        assert (out / recipe.name).resolve().parent == out.resolve(), name
        assert recipe.name not in (".", "..") and "/" not in recipe.name and "\\" not in recipe.name


def _path_fields(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """Fields that name a file or folder: typed Path, or documented as a path."""
    found = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += _path_fields(info.annotation, f"{key}.")
        elif "Path" in str(info.annotation) or "path" in (info.description or ""):
            found.append(key)
    return found


PATH_FIELDS = _path_fields()
PATHS = st.one_of(WORDS, st.text(max_size=40), st.text(alphabet="./a\x00\n", max_size=300),
                  st.integers(1, 6000).map(lambda n: "a" * n), st.integers(1, 400).map(lambda n: "a/" * n))


def test_the_path_fields_are_the_known_inputs():
    # Every path in a recipe is an input: outputs go only to --out/<name>/ (the one exception, opt-in
    # and documented: data.download: true lets torchvision download CIFAR into data.root). A new
    # path field must be added here on purpose, after checking where nfcompile writes it.
    assert sorted(PATH_FIELDS) == ["bench.table", "data.root", "model.pretrained", "tensorrt.timing_cache"]


@FUZZ
@given(field=st.sampled_from(PATH_FIELDS), value=PATHS, dataset=st.sampled_from(["cifar10", "imagefolder"]))
def test_any_string_in_a_path_field_is_accepted_or_refused_in_one_line(field, value, dataset):
    section, key = field.split(".")
    raw = {"name": "fuzz", section: {key: value}}
    if field == "data.root":
        raw["data"]["dataset"] = dataset
    recipe = _accepted_or_one_line(lambda: validate_recipe(raw, source="fuzz.yaml"))
    if recipe is not None:  # then what `check` and `build` look up before any stage runs
        _accepted_or_one_line(lambda: check_data(recipe.data), NfcompileError)
