"""One driver for every training job: plan, check the run dir, prepare it, build the
task, train, finish.

A training command is a `TrainingJob` (train-expert: `train.expert.EXPERT_JOB`; the
mixture strategies: `train.mixture_run.MixtureJob`, one per strategy recipe). `run_job`
does what every command does: take --out's write lock (held throughout, planning
included), plan in the calling process (every input checked, nothing written;
TimoeError for bad input), prepare the run dir once, then train in this process or
in workers spawned by PyTorch's elastic agent (`distributed`). Each worker runs
`train_in_worker`: the same plan again (its world size), the task, the shared loop
(`loop.run_training`), then the job's `finish` (a mixture writes its bundle). Workers
find their job again by its `ref` ("module:attribute"), since only plain data crosses
the process boundary.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from timoe_core.config import TrainingConfig, config_to_dict
from timoe_core.train import state as ckpt_state
from timoe_core.train.distributed import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    DistEnv,
    TrainingInterrupted,
    init_workers,
    outer_launch,
    run_dir_lock,
    train_or_launch,
)
from timoe_core.train.loop import LoopResult, TrainTask, run_training


class JobPlan(Protocol):
    """What the driver reads of a job's plan (the job's own plan class holds more)."""

    cfg: Any
    run_dir: Path
    world_size: int
    total_steps: int
    action: str  # run dir: "new", "resume" or "overwrite"
    notes: list[str]  # printed once by rank 0 before training

    @property
    def title(self) -> str: ...


class TrainingJob(Protocol):
    """One kind of training run."""

    ref: str  # "module:attribute" naming this job object, for spawned workers
    config_model: type[TrainingConfig]

    def plan(
        self, cfg: Any, world_size: int | None = None, check_run_dir: bool = True,
        restart: bool = False,
    ) -> JobPlan:
        """Check every input and derive the run (with check_run_dir: also the resume
        check, setting `plan.action`); raises TimoeError, writes nothing."""
        ...

    def prepare_run_dir(self, plan: Any) -> None:
        """Create or reset the run dir and record what the run is."""
        ...

    def build_task(self, plan: Any, env: DistEnv) -> TrainTask:
        """The model(s) and data of this worker, ready for the loop."""
        ...

    def wandb_config(self, plan: Any, env: DistEnv) -> dict[str, Any]:
        """What the job adds to the config logged to wandb."""
        ...

    def finish(self, plan: Any, task: TrainTask, result: LoopResult, env: DistEnv) -> None:
        """After the loop, on every rank (e.g. write the bundle on rank 0)."""
        ...


def find_job(ref: str) -> TrainingJob:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def main_print(env: DistEnv) -> Any:
    """`print` for rank 0's console; a no-op on the other ranks."""
    if not env.is_main:
        return lambda *a, **k: None
    return Console(soft_wrap=True, markup=False, emoji=False).print


def run_job(job: TrainingJob, cfg: TrainingConfig) -> Path:
    """Plan, prepare the run dir, train (here or in spawned workers); returns the run dir.

    TimoeError for bad input (nothing written), TrainingInterrupted when stopped by
    Ctrl-C/SIGTERM after a checkpoint (rerun to resume).
    """
    outer = outer_launch()
    restart = outer is not None and outer.restart_count > 0
    with run_dir_lock(cfg, outer):  # planned under the lock: it reads the run dir's state
        plan = job.plan(cfg, restart=restart)
        payload = {
            "job": job.ref,
            "config": config_to_dict(cfg),
            "prepared": False,
            "action": plan.action,
        }
        if train_or_launch(payload, cfg, plan.run_dir, plan.world_size, outer,
                           lambda: job.prepare_run_dir(plan), train_in_worker, worker_main):
            raise TrainingInterrupted(ckpt_state.interrupted_message(plan.run_dir))
    return plan.run_dir


def train_in_worker(payload: dict[str, Any]) -> LoopResult:
    """One worker's whole job (every rank runs it)."""
    job = find_job(payload["job"])
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
        task = job.build_task(plan, env)
        result = run_training(
            task,
            cfg,
            plan.run_dir,
            env,
            plan.total_steps,
            title=plan.title,
            wandb_config=config_to_dict(cfg) | job.wandb_config(plan, env),
        )
        job.finish(plan, task, result, env)
        return result
    finally:
        env.close()


def worker_main(payload: dict[str, Any]) -> int:
    """Entry point of a spawned worker (module level: pickled by reference)."""
    result = train_in_worker(payload)
    if result.interrupted:
        # Exit rather than return: an agent stopping on a signal waits for its workers
        # to exit and never collects return values.
        sys.exit(EXIT_INTERRUPTED)
    return EXIT_OK
