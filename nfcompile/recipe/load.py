"""Read a recipe file, apply `--set` overrides, validate, and hash it.

Every failure is a `RecipeError` naming the file, the field path and the problem on one line.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from nfcompile.errors import RecipeError
from nfcompile.recipe.schema import Recipe

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; anything bigger is a mistake
# What the loader will build, counted before anything is built (aliases expanded): a few hundred
# bytes of aliases can stand for gigabytes, and deep nesting exhausts the stack of PyYAML's
# recursive constructor. A real recipe is about 4 levels deep and a few hundred nodes.
MAX_RECIPE_DEPTH = 64
MAX_RECIPE_NODES = 100_000
MAX_EXPANDED_CHARS = MAX_RECIPE_BYTES


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    path = Path(path)
    raw = read_recipe_yaml(path)
    for override in overrides:
        apply_override(raw, override, source=str(path))
    return validate_recipe(raw, source=str(path))


def read_recipe_yaml(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        if path.is_dir():
            raise RecipeError("is a folder, expected a recipe YAML file", source=source)
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise RecipeError(f"file is {size} bytes; a recipe should be far below {MAX_RECIPE_BYTES}",
                              source=source)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("recipe file not found", source=source,
                          hint="see recipes/ for examples, e.g. recipes/quickstart.yaml") from None
    except PermissionError:
        raise RecipeError("recipe file is not readable (permission denied)", source=source) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=source) from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe: {exc.strerror or exc}", source=source) from None
    try:
        data = _safe_load(text)
    except RecipeTooLarge as exc:
        raise RecipeError(f"refused: {exc.problem} (line {exc.problem_mark.line + 1})", source=source,
                          hint="a recipe is plain settings; write the values out instead of nesting or aliasing "
                          "them") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"invalid YAML: {where}{problem}", source=source) from None
    if data is None:
        raise RecipeError("recipe is empty", source=source, hint="a recipe needs at least `name:`")
    if not isinstance(data, dict):
        raise RecipeError(f"the top level must be a mapping of sections, got {_yaml_type(data)}",
                          source=source)
    return data


class _RecipeLoader(yaml.SafeLoader):
    """`yaml.safe_load`, except that a key given twice in one mapping is an error.

    PyYAML keeps the last value silently, so a second `train:` section would quietly replace the
    first. Keys brought in by a `<<:` merge may still be overridden: that is what merges are for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = key in first_line
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first_line[key]})",
                    key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class RecipeTooLarge(yaml.YAMLError):
    """The document would build more than a recipe ever holds (see MAX_RECIPE_*)."""

    def __init__(self, problem: str, mark: yaml.Mark):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


def _check_bounds(text: str) -> None:
    """Walk the parser's events (PyYAML's parser is a loop, not a recursion) and count what
    construction would build, each alias counted as the whole node it repeats; raise
    `RecipeTooLarge` at the first limit crossed. Hand-written because PyYAML has no such limits."""
    depth = 0
    # One frame per open collection: [nodes, chars, anchor]; an anchored scalar is recorded at once.
    frames: list[list[Any]] = [[0, 0, None]]
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, chars) of the node it names
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            nodes, chars = sizes.get(event.anchor, (1, 0))  # an unknown anchor: the composer reports it
            frames[-1][0] += nodes
            frames[-1][1] += chars
        elif isinstance(event, yaml.ScalarEvent):
            frames[-1][0] += 1
            frames[-1][1] += len(event.value)
            if event.anchor:
                sizes[event.anchor] = (1, len(event.value))
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_RECIPE_DEPTH:
                raise RecipeTooLarge(f"nested more than {MAX_RECIPE_DEPTH} levels deep", event.start_mark)
            frames.append([1, 0, event.anchor])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            nodes, chars, anchor = frames.pop()
            if anchor:
                sizes[anchor] = (nodes, chars)
            frames[-1][0] += nodes
            frames[-1][1] += chars
        else:
            continue
        total_nodes = sum(frame[0] for frame in frames)
        total_chars = sum(frame[1] for frame in frames)
        if total_nodes > MAX_RECIPE_NODES:
            raise RecipeTooLarge(f"would build more than {MAX_RECIPE_NODES} values (aliases expanded)",
                                 event.start_mark)
        if total_chars > MAX_EXPANDED_CHARS:
            raise RecipeTooLarge(f"would build more than {MAX_EXPANDED_CHARS} characters of text (aliases "
                                 "expanded)", event.start_mark)


def _safe_load(text: str) -> Any:
    _check_bounds(text)
    return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader: plain data only, no Python objects


def apply_override(raw: dict[str, Any], override: str, *, source: str) -> None:
    """Apply one `a.b.c=value`; the value is read as YAML so `2`, `true`, `[1, 2]`, `null` are typed."""
    field, sep, text = override.partition("=")
    field = field.strip()
    origin = f"{source} (--set {override})"
    if not sep or not field:
        raise RecipeError("an override must look like section.field=value", source=origin)
    keys = field.split(".")
    if any(not key for key in keys):
        raise RecipeError(f"empty name in field path {field!r}", source=origin)
    try:
        value = _safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # an unquoted string that YAML cannot read, e.g. "a: b"; the schema judges it
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            path = tuple(keys[:depth + 1])
            # A known field that is not a section (`seed.x=1`) is named as such; an unknown name
            # is left to the schema, which suggests the closest one.
            if _model_at(path) is None and key in _field_names_at(path[:-1]):
                raise RecipeError(f"{'.'.join(path)} is a value, not a section", source=origin, field=field)
            child = node[key] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{'.'.join(keys[:depth + 1])} is a value, not a section", source=origin,
                              field=field)
        node = child
    node[keys[-1]] = value


def validate_recipe(raw: dict[str, Any], *, source: str) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise _recipe_error(exc, source) from None


def _recipe_error(exc: ValidationError, source: str) -> RecipeError:
    problems = []
    hint = None
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        # pydantic names union members in the path ("int", "str"): they are not fields.
        # An unknown key is the user's, whatever it says ("int" too): it stays in the field path.
        unknown = loc.pop() if error["type"] == "extra_forbidden" and loc else None
        loc = [part for part in loc if not part.startswith(("function-", "literal[", "union["))
               and part not in ("int", "str", "float", "bool", "constrained-int", "constrained-float",
                                "tuple[float, float, float]")] + ([unknown] if unknown is not None else [])
        # A key with a line break or other control character stays one line in the message.
        field = ".".join(part if part.isprintable() and part else repr(part) for part in loc) or "(recipe)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
            suggestion = _did_you_mean(error["loc"])
            if suggestion:
                message += f" (did you mean {suggestion!r}?)"
            hint = hint or f"allowed here: {', '.join(_field_names_at(error['loc'][:-1]))}"
        elif ("input" in error and error["type"] != "missing" and not isinstance(error["input"], dict)
              and repr(error["input"]) not in message):
            message += f" (got {error['input']!r})"
        problems.append(f"{field}: {message}" if field != "(recipe)" else message)
    count = len(problems)
    text = problems[0] if count == 1 else f"{problems[0]}; and {count - 1} more: " + "; ".join(problems[1:])
    return RecipeError(text, source=source, hint=hint)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Recipe
    for part in loc:
        info = next((f for name, f in model.model_fields.items()
                     if str(part) in (name, f.alias)), None)
        if info is None:
            return None
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def _field_names_at(loc: tuple) -> list[str]:
    model = _model_at(tuple(loc))
    return sorted(f.alias or name for name, f in model.model_fields.items()) if model else []


def _did_you_mean(loc: tuple) -> str | None:
    names = _field_names_at(loc[:-1])
    matches = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _yaml_type(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__)


# --------------------------------------------------------------------------- identity


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return json.loads(recipe.model_dump_json())


def fingerprint(value: Any) -> str:
    """sha256 of canonical JSON: equal settings give equal fingerprints across runs and machines."""
    if isinstance(value, BaseModel):
        value = json.loads(value.model_dump_json())
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def without_fields(values: dict[str, Any], drop: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a recipe or section as a dict) without the fields ``drop`` marks True; a nested dict in
    ``drop`` drops fields of that section: what a key should not depend on."""
    kept = {}
    for name, value in values.items():
        rule = drop.get(name)
        if rule is True:
            continue
        kept[name] = without_fields(value, rule) if isinstance(rule, dict) and isinstance(value, dict) else value
    return kept


def recipe_hash(recipe: Recipe) -> str:
    return fingerprint(recipe)


def recipe_yaml(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as YAML, in the schema's field order."""
    return yaml.safe_dump(recipe_dict(recipe), sort_keys=False, default_flow_style=None, width=100)


def with_overrides(recipe: Recipe, overrides: Iterable[str], source: str = "recipe") -> Recipe:
    """A copy of a validated recipe with more overrides applied (used by benchmarks and tests)."""
    raw = copy.deepcopy(recipe_dict(recipe))
    for override in overrides:
        apply_override(raw, override, source=source)
    return validate_recipe(raw, source=source)
