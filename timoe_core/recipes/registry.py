"""The recipes registry (strategy name -> recipe object) and the commands built on it:
`train_router` (timoe train-router) and `coadapt` (timoe coadapt)."""

from __future__ import annotations

from pathlib import Path

from timoe_core.config import CoadaptConfig, TrainRouterConfig
from timoe_core.errors import TimoeError
from timoe_core.model.weighting import register_strategy
from timoe_core.recipes import avg, learned_avg
from timoe_core.recipes import coadapt as coadapt_recipe
from timoe_core.train.recipe import Recipe
from timoe_core.train.run_dir import check_finished_runs

RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Register `recipe` (and its strategy's weighting with the model); returns it."""
    register_strategy(recipe.strategy)
    RECIPES[recipe.strategy.name] = recipe
    return recipe


_BUILTIN = (avg.RECIPE, learned_avg.RECIPE, coadapt_recipe.RECIPE)
for _recipe in _BUILTIN:
    register(_recipe)


def get_recipe(name: str) -> Recipe:
    """The registered recipe of strategy `name` (TimoeError listing the known ones)."""
    if name not in RECIPES:
        raise TimoeError(f"unknown strategy {name!r}: use one of {', '.join(RECIPES)}")
    return RECIPES[name]


def train_router(cfg: TrainRouterConfig) -> Path:
    """`timoe train-router`: build the TiMoE bundle `cfg` describes (avg) or train its
    router (learned-avg); returns the bundle dir.

    Raises TimoeError for bad input (nothing written), TrainingInterrupted when stopped
    by Ctrl-C/SIGTERM after writing a checkpoint (rerun to resume).
    """
    check_finished_runs(cfg.experts)
    return get_recipe(cfg.strategy).train(cfg)


def coadapt(cfg: CoadaptConfig) -> Path:
    """`timoe coadapt`: co-adapt the router and the experts `cfg` names; returns the
    bundle dir (errors as `train_router`)."""
    check_finished_runs(cfg.experts)
    return get_recipe("coadapt").train(cfg)
