"""`coadapt(cfg)`: `timoe coadapt` — the coadapt strategy's recipe
(timoe_core/strategies/coadapt.py) run through the shared job driver."""

from __future__ import annotations

from pathlib import Path

from timoe_core.config import CoadaptConfig
from timoe_core.strategies import get_strategy
from timoe_core.train.state import check_finished_runs


def coadapt(cfg: CoadaptConfig) -> Path:
    """Co-adapt the router and the experts `cfg` names; returns the bundle dir.

    Raises TimoeError for bad input (nothing written), TrainingInterrupted when stopped
    by Ctrl-C/SIGTERM after writing a checkpoint (rerun to resume).
    """
    check_finished_runs(cfg.experts)
    return get_strategy("coadapt").recipe_module().train(cfg)  # type: ignore[no-any-return]
