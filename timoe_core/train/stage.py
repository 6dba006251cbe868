"""`Stage`: one stage of a staged (point-in-time) mixture run, as the strategy's recipe
receives it to make the stage's task (`StageTaskFactory`, the recipe's `stage_task`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from timoe_core.data.windows import TokenWindows
from timoe_core.model.expert_pool import ExpertRecord
from timoe_core.model.mixture import TiMoE
from timoe_core.train.distributed import DistEnv
from timoe_core.train.mixture_record import MixtureConfig
from timoe_core.train.mixture_task import MixtureTask
from timoe_core.train.task import BatchT


@dataclass
class Stage:
    """One stage's training, as a recipe's `stage_task` receives it."""

    cfg: MixtureConfig
    cutoff: date  # the stage's data cutoff: its windows are dated in (previous cutoff, cutoff]
    view: TiMoE  # the artefacts usable as of cutoff, with the stage's router
    windows: TokenWindows
    val_windows: TokenWindows | None
    holder: ExpertRecord | None  # the artefact of the slice holding cutoff
    steps: int
    run_dir: Path  # OUT/stages/<date>
    env: DistEnv
    amp: bool
    eval_windows: int


# A recipe's task for one stage (learned-avg: the router; coadapt: router + own expert).
StageTaskFactory = Callable[[Stage], MixtureTask[BatchT]]
