"""One driver for every training job: plan, check the run dir, prepare it, then train
the job's stages one after the other, each through the shared loop.

A training command is a `TrainingJob` (train-expert: `train.expert.EXPERT_JOB`; a
mixture strategy: its recipe's job, `train.mixture_run.MixtureJob` for one run over
every year (policy inclusive) or `train.staging.StagedJob`, one stage per data cutoff
(point-in-time)). `run_job` does what every command does: take --out's write lock (held
throughout, planning included), plan in the calling process (every input checked,
nothing written; TimoeError for bad input), prepare the run dir once, then train in
this process or in workers spawned by PyTorch's elastic agent (`distributed`). Each
worker runs `train_in_worker`: the same plan again (its world size), then the job's
`stages`: a generator that yields one `StageRun` (a task and where and how long to
train it) per stage, receives the loop's result (`loop.run_training`), and finishes
(a mixture writes its bundle) after the last. A single-run job is one stage
(`single_stage`). Workers find their job again by its `ref` ("module:attribute"),
since only plain data crosses the process boundary.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar, cast

from rich.console import Console

from timoe_core.config import TrainingConfig, config_to_dict
from timoe_core.train.distributed import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    DistEnv,
    TrainingInterrupted,
    init_workers,
    outer_launch,
)
from timoe_core.train.launch import WorkerPayload, run_dir_lock, train_or_launch
from timoe_core.train.loop import LoopResult, run_training
from timoe_core.train.run_dir import RunDirAction, interrupted_message
from timoe_core.train.task import BatchT, EvalBatchT, TrainTask


class JobPlan(Protocol):
    """What the driver reads of a job's plan (the job's own plan class holds more)."""

    run_dir: Path
    world_size: int
    total_steps: int
    action: RunDirAction
    notes: list[str]  # printed once by rank 0 before training

    @property
    def cfg(self) -> TrainingConfig: ...  # read-only: a job's plan may hold a narrower config

    @property
    def title(self) -> str: ...


@dataclass
class StageRun(Generic[BatchT, EvalBatchT]):
    """One stage of a job for the shared loop: its task, config, run dir and budget."""

    task: TrainTask[BatchT, EvalBatchT]
    cfg: TrainingConfig
    run_dir: Path
    total_steps: int
    title: str
    wandb_config: dict[str, object]
    checkpoint_at_end: bool = True  # False: the stage's caller saves what it keeps

    def train(self, env: DistEnv) -> LoopResult:
        """This stage through the shared loop (`loop.run_training`)."""
        return run_training(self.task, self.cfg, self.run_dir, env, self.total_steps,
                            title=self.title, wandb_config=self.wandb_config,
                            checkpoint_at_end=self.checkpoint_at_end)


class TrainableStage(Protocol):
    """A stage as the driver sees it (a `StageRun` of any task's batch types)."""

    def train(self, env: DistEnv) -> LoopResult: ...


# A job's stages: yields each stage, is sent the loop's result, finishes after the last.
Stages = Generator[TrainableStage, LoopResult, None]


ConfigT = TypeVar("ConfigT", bound=TrainingConfig)
PlanT = TypeVar("PlanT", bound=JobPlan)


class TrainingJob(Protocol[ConfigT, PlanT]):
    """One kind of training run: its config model and its plan class."""

    ref: str  # "module:attribute" naming this job object, for spawned workers

    @property
    def config_model(self) -> type[ConfigT]: ...

    def plan(
        self, cfg: ConfigT, world_size: int | None = None, check_run_dir: bool = True,
        restart: bool = False,
    ) -> PlanT:
        """Check every input and derive the run (with check_run_dir: also the resume
        check, setting `plan.action`); raises TimoeError, writes nothing."""
        ...

    def prepare_run_dir(self, plan: PlanT) -> None:
        """Create or reset the run dir and record what the run is."""
        ...

    def stages(self, plan: PlanT, env: DistEnv) -> Stages:
        """This worker's stages, in order (a single-run job: `single_stage(self, ...)`)."""
        ...


class SingleRunJob(TrainingJob[ConfigT, PlanT], Protocol[ConfigT, PlanT, BatchT, EvalBatchT]):
    """A job trained in one run: its task, what it logs, what it does after."""

    def build_task(self, plan: PlanT, env: DistEnv) -> TrainTask[BatchT, EvalBatchT]:
        """The model(s) and data of this worker, ready for the loop."""
        ...

    def wandb_config(self, plan: PlanT, env: DistEnv) -> dict[str, object]:
        """What the job adds to the config logged to wandb."""
        ...

    def finish(self, plan: PlanT, task: TrainTask[BatchT, EvalBatchT], result: LoopResult,
               env: DistEnv) -> None:
        """After the loop, on every rank (e.g. write the bundle on rank 0)."""
        ...


def single_stage(job: SingleRunJob[ConfigT, PlanT, BatchT, EvalBatchT], plan: PlanT,
                 env: DistEnv) -> Stages:
    """The one stage of a single-run job: its task over the whole planned run."""
    task = job.build_task(plan, env)
    result = yield StageRun(task, plan.cfg, plan.run_dir, plan.total_steps, plan.title,
                            config_to_dict(plan.cfg) | job.wandb_config(plan, env))
    job.finish(plan, task, result, env)


def find_job(ref: str) -> TrainingJob[TrainingConfig, JobPlan]:
    """The job `ref` names: "module:attribute", the attribute maybe dotted ("RECIPE.job").
    What a ref names is known only at run time: the job is taken to be what it says."""
    module, _, attr = ref.partition(":")
    found: object = importlib.import_module(module)
    for name in attr.split("."):
        found = getattr(found, name)
    return cast("TrainingJob[TrainingConfig, JobPlan]", found)


def main_print(env: DistEnv) -> Callable[..., None]:
    """`print` for rank 0's console; a no-op on the other ranks."""
    if not env.is_main:
        return lambda *a, **k: None
    return Console(soft_wrap=True, markup=False, emoji=False).print


def run_job(job: TrainingJob[ConfigT, PlanT], cfg: ConfigT) -> Path:
    """Plan, prepare the run dir, train (here or in spawned workers); returns the run dir.

    TimoeError for bad input (nothing written), TrainingInterrupted when stopped by
    Ctrl-C/SIGTERM after a checkpoint (rerun to resume).
    """
    outer = outer_launch()
    restart = outer is not None and outer.restart_count > 0
    with run_dir_lock(cfg, outer):  # planned under the lock: it reads the run dir's state
        plan = job.plan(cfg, restart=restart)
        payload: WorkerPayload = {
            "job": job.ref,
            "config": config_to_dict(cfg),
            "prepared": False,
            "action": plan.action,
        }
        if train_or_launch(payload, cfg, plan.run_dir, plan.world_size, outer,
                           lambda: job.prepare_run_dir(plan),
                           lambda p: train_in_worker(p, job), worker_main):
            raise TrainingInterrupted(interrupted_message(plan.run_dir))
    return plan.run_dir


def train_in_worker(
    payload: WorkerPayload, job: TrainingJob[ConfigT, PlanT] | None = None
) -> LoopResult:
    """One worker's whole job (every rank runs it); a spawned worker finds `job` by its
    ref, the calling process passes it."""
    if job is None:
        return _train_job(find_job(payload["job"]), payload)
    return _train_job(job, payload)


def _train_job(job: TrainingJob[ConfigT, PlanT], payload: WorkerPayload) -> LoopResult:
    cfg = job.config_model.model_validate(payload["config"])
    env = init_workers(cfg.device)
    try:
        plan = job.plan(cfg, world_size=env.world_size, check_run_dir=False)
        if not payload["prepared"] and env.is_main:
            plan.action = payload["action"]
            job.prepare_run_dir(plan)
        env.barrier()
        say = main_print(env)
        for note in plan.notes:
            say(note, highlight=False)
        return run_stages(job.stages(plan, env), env)
    finally:
        env.close()


def run_stages(stages: Stages, env: DistEnv) -> LoopResult:
    """Train each stage `stages` yields through the shared loop, sending back its result;
    the last stage's result (a stopped stage ends the job: rerun to resume)."""
    result = LoopResult(step=0, total_steps=0, tokens=0, interrupted=False, checkpoint=None,
                        eval_loss=None)
    try:
        run = next(stages)
        while True:
            result = run.train(env)
            run = stages.send(result)
    except StopIteration:
        return result


def worker_main(payload: WorkerPayload) -> int:
    """Entry point of a spawned worker (module level: pickled by reference)."""
    result = train_in_worker(payload)
    if result.interrupted:
        # Exit rather than return: an agent stopping on a signal waits for its workers
        # to exit and never collects return values.
        sys.exit(EXIT_INTERRUPTED)
    return EXIT_OK
