"""The trainer state a checkpoint holds, assembled from the components' own state (the
optimizer's and the schedule's `state_dict`, the data position, the task's state, every
rank's RNG) and loaded into them again on resume, so the rest of a resumed run is the one
an uninterrupted run would have done (bitwise in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from timoe_core.config import TrainingConfig
from timoe_core.train import rng
from timoe_core.train import state as ckpt_state
from timoe_core.train.distributed import DistEnv
from timoe_core.train.orders import DataPosition
from timoe_core.train.task import BatchT, EvalBatchT, TrainTask
from timoe_core.train.trainer import Trainer


@dataclass
class Progress:
    """How far a run is: main steps done, tokens read, seconds trained, data position."""

    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    position: DataPosition = field(default_factory=DataPosition)


def restore(saved: ckpt_state.SavedTrainerState | None, task: TrainTask[BatchT, EvalBatchT],
            trainer: Trainer[BatchT, EvalBatchT], cfg: TrainingConfig, env: DistEnv
            ) -> Progress:
    """Load a checkpoint's trainer state (`saved`) into the optimizer, schedule, task and
    RNGs; a new run (None) seeds its RNGs and starts from the task's optimizer state,
    if it has one."""
    if saved is None:
        rng.seed_all(rng.rank_seed(cfg.seed, env.rank))
        if task.start_optimizer_state is not None:  # its moments; this run's hyperparameters
            fresh = trainer.optimizer.state_dict()
            trainer.optimizer.load_state_dict({**fresh, "state": task.start_optimizer_state[
                "state"]})
        return Progress()
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.schedule.load_state_dict(saved["schedule"])
    progress = Progress(saved["step"], saved["tokens"], saved["elapsed"],
                        DataPosition.from_dict(saved["data"]))
    task_state = saved.get("task_state")
    if task_state is not None:
        task.load_state_dict(task_state)
    if saved["world_size"] == env.world_size and len(saved["rng"]) == env.world_size:
        rng.restore_rng(saved["rng"][env.rank], env.device)
    else:
        rng.seed_all(rng.rank_seed(cfg.seed + progress.step, env.rank))
    return progress


def save(run_dir: Path, task: TrainTask[BatchT, EvalBatchT],
         trainer: Trainer[BatchT, EvalBatchT], progress: Progress, cfg: TrainingConfig,
         env: DistEnv) -> Path | None:
    """Checkpoint the run at `progress.step` (every rank calls this: the RNG states are
    gathered to rank 0, which writes); returns the checkpoint's folder on every rank."""
    rngs = env.gather_to_main(rng.capture_rng(env.device))
    path = None
    if env.is_main:
        assert rngs is not None
        state: ckpt_state.TrainerState = {
            "task": task.name,
            "tokens": progress.tokens,
            "elapsed": progress.elapsed,
            "data": progress.position.to_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "schedule": trainer.schedule.state_dict(),
            "rng": rngs,
            "world_size": env.world_size,
        }
        task_state = task.state_dict()
        if task_state is not None:
            state["task_state"] = task_state
        path = ckpt_state.write_checkpoint(
            run_dir, progress.step, task.save_weights, state, keep=cfg.keep_checkpoints
        ).path
    return env.broadcast(path)
