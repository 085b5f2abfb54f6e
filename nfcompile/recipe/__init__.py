"""Recipe: typed schema, YAML loading, `--set` overrides and hashing."""

from nfcompile.recipe.load import (fingerprint, load_recipe, recipe_dict, recipe_hash, recipe_yaml,
                                   with_overrides)
from nfcompile.recipe.schema import Recipe

__all__ = ["Recipe", "fingerprint", "load_recipe", "recipe_dict", "recipe_hash", "recipe_yaml",
           "with_overrides"]
