"""`train_router(cfg)`: `timoe train-router` — a TiMoE bundle over expert run dirs.

--strategy picks the recipe from the strategy registry (timoe_core/strategies/): avg
writes the bundle at once (nothing to train); learned-avg trains a router over frozen
experts through the shared job driver (train/job.py).
"""

from __future__ import annotations

from pathlib import Path

from timoe_core.config import TrainRouterConfig
from timoe_core.strategies import get_strategy
from timoe_core.train.state import check_finished_runs


def train_router(cfg: TrainRouterConfig) -> Path:
    """Build the TiMoE bundle `cfg` describes (avg) or train its router (learned-avg);
    returns the bundle dir.

    Raises TimoeError for bad input (nothing written), TrainingInterrupted when stopped
    by Ctrl-C/SIGTERM after writing a checkpoint (rerun to resume).
    """
    check_finished_runs(cfg.experts)
    return get_strategy(cfg.strategy).recipe_module().train(cfg)  # type: ignore[no-any-return]
