"""Recipes: how each aggregation strategy's bundle is made, one module each, registered here.

A recipe is an object (`MixtureRecipe` or avg's `BundleRecipe`, timoe_core/train/) that
names its strategy (the weighting the model reads, model/weighting.py), its command's
config model, and what it trains. This layer sits above `train` and below the
applications: the model never imports it, and nothing in `train` imports a recipe.

Adding a strategy is one module (its recipe object, next to avg.py, learned_avg.py and
coadapt.py) and one line in `_BUILTIN` (registry.py) (or `register(RECIPE)` from a plugin); see
docs/architecture.md.
"""

from timoe_core.recipes.registry import RECIPES, get_recipe, register, train_router

__all__ = ["RECIPES", "get_recipe", "register", "train_router"]
