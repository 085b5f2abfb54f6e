"""One function per CLI command. Loads the recipe, calls the pipeline or a stage, prints results.

Results go to stdout (a rich table, or one JSON document with --json); logs go to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

from nfcompile.core.io import dumps_json
from nfcompile.errors import RecipeError
from nfcompile.recipe import Recipe, load_recipe, recipe_dict, recipe_hash, recipe_yaml

stdout = Console(soft_wrap=True)


def _emit_json(document: Any) -> None:
    print(dumps_json(document), end="")


def load_checked_recipe(path: Path, overrides: Iterable[str]) -> Recipe:
    """Schema, then what the schema cannot know: the architecture, the input size, the dataset."""
    from nfcompile.data import check_data
    from nfcompile.models import build_unit_net, unit_shapes_for

    recipe = load_recipe(path, overrides)
    # A user error found now costs seconds; found after training it costs the run.
    try:
        net = build_unit_net(recipe.model.model_copy(update={"pretrained": None}),
                             recipe.model.num_classes or 10)
        unit_shapes_for(net, recipe.data.image_size)
        check_data(recipe.data)
    except RecipeError as exc:
        raise exc.in_file(str(path)) from None
    return recipe


def check(path: Path, overrides: Iterable[str], *, as_json: bool, list_archs: bool) -> Recipe:
    from nfcompile.data import list_datasets
    from nfcompile.models import list_adapters

    recipe = load_checked_recipe(path, overrides)
    if as_json:
        document: dict[str, Any] = {"recipe": recipe_dict(recipe), "recipe_sha256": recipe_hash(recipe)}
        if list_archs:
            document.update(archs=list_adapters(), datasets=list_datasets())
        _emit_json(document)
        return recipe
    stdout.print(f"# {path}: valid (sha256 {recipe_hash(recipe)[:16]})", highlight=False)
    stdout.print(recipe_yaml(recipe), end="", highlight=False, markup=False)
    if list_archs:
        stdout.print(f"# architectures: {', '.join(list_adapters())}", highlight=False)
        stdout.print(f"# datasets: {', '.join(list_datasets())}", highlight=False)
    return recipe
