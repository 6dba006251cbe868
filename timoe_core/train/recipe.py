"""The recipe protocol: what a strategy's recipe (timoe_core/recipes/) gives the training
driver, and the two kinds of recipe.

`MixtureRecipe`: a strategy that trains part of a mixture. It gives its config model,
its task over a planned run (`make_task`, policy inclusive: one stage over every year,
train/mixture_run.py) and its task for one stage (`stage_task`, policy point-in-time:
one stage per data cutoff, train/staging.py); either job runs through `job.run_job`. `BundleRecipe`: a strategy with nothing to train
(avg), whose `write` makes the bundle at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Generic, Protocol

from timoe_core.config import CoadaptConfig, TrainRouterConfig
from timoe_core.model.point_in_time import canonical_policy
from timoe_core.model.weighting import Strategy
from timoe_core.train.job import run_job
from timoe_core.train.mixture_record import MixtureConfig
from timoe_core.train.mixture_run import MixtureJob, TaskFactory
from timoe_core.train.stage import StageTaskFactory
from timoe_core.train.staging import StagedJob
from timoe_core.train.task import BatchT


class Recipe(Protocol):
    """What the recipes registry (timoe_core/recipes/) holds for each strategy."""

    @property
    def strategy(self) -> Strategy: ...

    def train(self, cfg: MixtureConfig) -> Path:
        """Make the bundle `cfg` describes; returns the bundle dir."""
        ...


@dataclass(frozen=True)
class BundleRecipe:
    """A strategy with nothing to train: `write(cfg)` makes the bundle."""

    strategy: Strategy
    write: Callable[[TrainRouterConfig], Path]

    def train(self, cfg: MixtureConfig) -> Path:
        assert isinstance(cfg, TrainRouterConfig)
        return self.write(cfg)


@dataclass(frozen=True, eq=False)
class MixtureRecipe(Generic[BatchT]):
    """A strategy that trains part of a mixture, through the one job driver (job.py)."""

    strategy: Strategy
    config_model: type[TrainRouterConfig | CoadaptConfig]
    make_task: TaskFactory[BatchT]
    stage_task: StageTaskFactory[BatchT]
    module: str  # the module holding this recipe as RECIPE: spawned workers find it

    @cached_property
    def job(self) -> MixtureJob[BatchT]:
        """Policy inclusive: one stage over every year (several workers allowed)."""
        return MixtureJob(self.strategy.name, self.config_model, self.make_task,
                          ref=f"{self.module}:RECIPE.job")

    @cached_property
    def staged_job(self) -> StagedJob[BatchT]:
        """Policy point-in-time: one stage per data cutoff, a router snapshot each."""
        return StagedJob(self.strategy, self.config_model, self.stage_task,
                         ref=f"{self.module}:RECIPE.staged_job")

    def job_for(self, cfg: MixtureConfig) -> MixtureJob[BatchT] | StagedJob[BatchT]:
        staged = canonical_policy(cfg.policy) == "point-in-time"
        return self.staged_job if staged else self.job

    def train(self, cfg: MixtureConfig) -> Path:
        """Train the bundle `cfg` describes through the one job driver (`run_job`)."""
        job = self.job_for(cfg)
        if isinstance(job, StagedJob):  # one call each: run_job is typed by the job's plan
            return run_job(job, cfg)
        return run_job(job, cfg)
