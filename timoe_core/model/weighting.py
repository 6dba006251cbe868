"""The weighting registry: how the mixture of each strategy weighs its eligible experts.

A strategy's weighting is "uniform" (equal weights over E(d), no router) or "router"
(per-token weights from a causal router); `adapts_experts` says its training changes
experts (stored in the bundle), so each data year needs the expert of its own slice,
eligible as of that year. The model reads a bundle's strategy here, without any training
code; how a strategy is trained is its recipe (timoe_core/recipes/), which registers its
`Strategy` here when it is registered (`recipes.register`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from timoe_core.errors import TimoeError

Weighting = Literal["uniform", "router"]


@dataclass(frozen=True)
class Strategy:
    name: str
    weighting: Weighting
    # Training changes experts (they are stored in the bundle); each data year then
    # needs the expert of its own slice, eligible as of that year.
    adapts_experts: bool = False

    @property
    def uses_router(self) -> bool:
        return self.weighting == "router"


AVG = Strategy("avg", "uniform")
LEARNED_AVG = Strategy("learned-avg", "router")
COADAPT = Strategy("coadapt", "router", adapts_experts=True)

REGISTRY: dict[str, Strategy] = {s.name: s for s in (AVG, LEARNED_AVG, COADAPT)}


def register_strategy(strategy: Strategy) -> None:
    """Make `strategy` known to the model (its bundles load); a name is registered once
    (the same record again is a no-op)."""
    known = REGISTRY.get(strategy.name)
    if known is not None and known != strategy:
        raise ValueError(f"strategy {strategy.name!r} is already registered as {known}")
    REGISTRY[strategy.name] = strategy


def strategy_names() -> tuple[str, ...]:
    """The registered strategies' names, in registration order."""
    return tuple(REGISTRY)


def get_strategy(name: str) -> Strategy:
    """The registered strategy `name` (TimoeError listing the known ones)."""
    if name not in REGISTRY:
        raise TimoeError(f"unknown strategy {name!r}: use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]
