"""Aggregation strategies: each is a weighting plus a training recipe, registered here.

A strategy names how the mixture weighs its eligible experts (`weighting`: "uniform",
equal weights and no router; or "router", per-token weights from a causal router) and
how a bundle of it is made (`recipe`: the module holding `CONFIG`, the config model of
its command, and `train(cfg) -> bundle dir`). Recipes are imported only when a bundle
is built, so the model package can read a strategy's weighting without importing any
training code.

Adding a strategy is one module (its recipe, next to avg.py, learned_avg.py and
coadapt.py) and one line in `REGISTRY` below; see docs/architecture.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from timoe_core.errors import TimoeError


@dataclass(frozen=True)
class Strategy:
    name: str
    weighting: Literal["uniform", "router"]
    recipe: str  # module path of the training recipe
    # Training changes experts (they are stored in the bundle); each data year then
    # needs the expert of its own slice, eligible as of that year.
    adapts_experts: bool = False

    @property
    def uses_router(self) -> bool:
        return self.weighting == "router"

    def recipe_module(self) -> ModuleType:
        return importlib.import_module(self.recipe)


REGISTRY: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("avg", "uniform", "timoe_core.strategies.avg"),
        Strategy("learned-avg", "router", "timoe_core.strategies.learned_avg"),
        Strategy("coadapt", "router", "timoe_core.strategies.coadapt", adapts_experts=True),
    )
}
STRATEGIES: tuple[str, ...] = tuple(REGISTRY)


def get_strategy(name: str) -> Strategy:
    """The registered strategy `name` (TimoeError listing the known ones)."""
    if name not in REGISTRY:
        raise TimoeError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    return REGISTRY[name]
