"""The training loop every training command shares (train-expert, train-router, coadapt).

A command describes *what* to train as a `TrainTask` (train/task.py: the protocol);
`run_training` does the rest the same way for all: DDP, the warmup–stable–decay
schedule, AdamW, gradient accumulation, clipping, AMP, torch.compile, evaluation,
checkpoints and resume, Ctrl-C, metrics.jsonl / rich progress / wandb. The data orders
are in train/orders.py, one optimizer step in train/trainer.py, the trainer state a
checkpoint holds in train/trainer_state.py.

On CUDA by default (`RuntimeChoices`, each switchable in the config): bf16 autocast,
TF32 matmuls, fused AdamW, torch.compile, batches from pinned memory copied
non_blocking; and a step never reads a tensor back to the host (loss and metrics are
summed on the device and read once per log step), so the GPU is never waited for
between logs. On CPU all of these are off unless asked for.

Resume: `run_training` resumes from the run dir's latest checkpoint when there is one
(the command decides beforehand whether that is allowed): weights, optimizer, step,
tokens, data position and every rank's RNG states are restored, so the rest of the run
is the one an uninterrupted run would have done (bitwise in one process).

Writing a training command: a `TrainingJob` that `job.run_job` runs (plan and check
every input, decide the run dir, prepare it, then yield each stage's task to this loop);
train/expert.py (`EXPERT_JOB`) is the worked example.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generic

import torch

from timoe_core.config import TrainingConfig
from timoe_core.errors import TimoeError
from timoe_core.io import open_for_append
from timoe_core.train import state as ckpt_state
from timoe_core.train import trainer_state
from timoe_core.train.distributed import DistEnv, StopRequest, outer_launch
from timoe_core.train.metrics import MetricsLogger, truncate_metrics
from timoe_core.train.task import BatchT, EvalBatchT, TrainTask
from timoe_core.train.trainer import Trainer, micro_batches
from timoe_core.train.trainer_state import Progress


@dataclass
class LoopResult:
    step: int
    total_steps: int
    tokens: int
    interrupted: bool
    checkpoint: Path | None
    eval_loss: float | None


class _StepLog:
    """The loss and metrics of the steps since the last log record, summed on the device
    (read back once per record), and their tokens and time for tokens/s."""

    def __init__(self, device: torch.device, t0: float) -> None:
        self.device = device
        self.reset(t0)

    def reset(self, t0: float) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.metrics: dict[str, torch.Tensor] = {}
        self.steps, self.tokens, self.t0 = 0, 0, t0

    def add(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], tokens: int) -> None:
        self.loss += loss
        for k, v in metrics.items():
            self.metrics[k] = self.metrics[k] + v if k in self.metrics else v
        self.steps += 1
        self.tokens += tokens


class _Run(Generic[BatchT, EvalBatchT]):
    """The main steps of one `run_training` call: each step, its log record, evaluation,
    checkpoint and decay branch, in that order."""

    def __init__(self, task: TrainTask[BatchT, EvalBatchT], trainer: Trainer[BatchT, EvalBatchT],
                 cfg: TrainingConfig, run_dir: Path, env: DistEnv, logger: MetricsLogger,
                 progress: Progress, end_step: int, checkpoint_at_end: bool,
                 last_ckpt: Path | None) -> None:
        self.task, self.trainer, self.cfg, self.run_dir, self.env = task, trainer, cfg, run_dir, env
        self.logger, self.progress, self.end_step = logger, progress, end_step
        self.checkpoint_at_end, self.last_ckpt = checkpoint_at_end, last_ckpt
        self.eval_loss: float | None = None
        self.per_rank = cfg.batch_size * cfg.grad_accum
        self.global_batch = self.per_rank * env.world_size
        self.tokens_per_step = self.global_batch * task.tokens_per_window
        self.windows_log = (run_dir / "debug" / f"windows-rank{env.rank}.jsonl"
                            if cfg.log_windows else None)
        if self.windows_log is not None:
            self.windows_log.parent.mkdir(exist_ok=True)
        self.start, self.elapsed_before = time.perf_counter(), progress.elapsed
        self.log = _StepLog(env.device, self.start)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def resume_branch(self) -> None:
        """A resumed run stopped inside a decay branch goes on with it first."""
        branch = self.task.branch_after(self.progress.step)
        if branch is not None and not branch.done:
            self.logger.message(f"step {self.progress.step}: decay branch of {branch.steps} steps")
            self.trainer.run_branch(branch, self.global_batch)

    def step(self, stop: StopRequest) -> bool:
        """One main step and what follows it; True when a stop was requested."""
        task, cfg, env, p = self.task, self.cfg, self.env, self.progress
        indices, next_position = task.order.take(p.position, self.global_batch)
        mine = indices[env.rank * self.per_rank : (env.rank + 1) * self.per_rank]
        if self.windows_log is not None:
            with open_for_append(self.windows_log) as f:
                f.write(json.dumps({"step": p.step, "windows": mine.tolist()}) + "\n")
        loss, metrics, grad_norm = self.trainer.step(
            p.step, micro_batches(task, mine, cfg.grad_accum, env.device), cfg.grad_accum
        )
        p.step += 1
        task.after_step(p.step, env.is_main)
        ckpt_state.fault_point(env.rank, p.step)  # test hook, inert unless set
        p.position = next_position
        p.tokens += self.tokens_per_step
        self.log.add(loss, metrics, self.tokens_per_step)
        stopping = env.any(stop.requested)
        done = p.step == self.end_step
        self.logger.progress(p.step)
        if p.step % cfg.log_every == 0 or p.step == 1 or done or stopping:
            self.write_log(grad_norm)
        paused = time.perf_counter()  # eval and checkpoints: not in tokens/s
        if (cfg.eval_every and p.step % cfg.eval_every == 0) or done:
            self.evaluate()
        branch = None if stopping else task.branch_after(p.step)
        if (
            (cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0
             and not (done and not self.checkpoint_at_end))
            or (done and self.checkpoint_at_end)
            or stopping or branch is not None  # a branch resumes from its start
        ):
            p.elapsed = self.elapsed()
            self.last_ckpt = trainer_state.save(self.run_dir, task, self.trainer, p, cfg, env)
        if branch is not None and not branch.done:
            self.logger.message(f"step {p.step}: decay branch of {branch.steps} steps")
            self.trainer.run_branch(branch, self.global_batch)
        self.log.t0 += time.perf_counter() - paused
        return stopping

    def write_log(self, grad_norm: torch.Tensor | None) -> None:
        """The train record of the steps since the last (one read back from the device)."""
        env, p, log = self.env, self.progress, self.log
        names = sorted(log.metrics)
        packed = torch.stack([log.loss] + [log.metrics[k] for k in names]).float()
        packed = env.sum(packed) / (env.world_size * log.steps)
        values = packed.tolist()
        if not math.isfinite(values[0]):
            raise TimoeError(
                f"the loss became {values[0]} at step {p.step}: training diverged; "
                f"lower --lr (now {self.cfg.lr}) or raise --warmup-fraction"
            )
        now = time.perf_counter()  # after the sync of .tolist()
        p.elapsed = self.elapsed_before + now - self.start
        self.logger.train({
            "step": p.step,
            "loss": values[0],
            "lr": self.trainer.schedule.lr(p.step - 1),
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens": p.tokens,
            "tokens_per_s": log.tokens / max(now - log.t0, 1e-9),
            "elapsed": p.elapsed,
        } | dict(zip(names, values[1:])))
        log.reset(now)

    def evaluate(self) -> None:
        p = self.progress
        self.eval_loss = self.trainer.evaluate()
        p.elapsed = self.elapsed()
        if self.eval_loss is not None:
            self.logger.eval({"step": p.step, "eval_loss": self.eval_loss,
                              "eval_ppl": math.exp(min(self.eval_loss, 50.0)),
                              "tokens": p.tokens, "elapsed": p.elapsed})


def run_training(
    task: TrainTask[BatchT, EvalBatchT],
    cfg: TrainingConfig,
    run_dir: Path,
    env: DistEnv,
    total_steps: int,
    *,
    title: str = "train",
    wandb_config: dict[str, object] | None = None,
    checkpoint_at_end: bool = True,
) -> LoopResult:
    """Train `task` to `total_steps` (or cfg.stop_at_step), resuming from the latest
    checkpoint in `run_dir` if there is one. Every rank calls this.

    checkpoint_at_end False: no checkpoint at the last step (a staged router's stage,
    whose caller saves what it keeps and removes the trainer state at once; a kill
    before that reruns the stage from its last checkpoint, to the same weights)."""
    run_dir = Path(run_dir)
    ckpt = ckpt_state.latest_checkpoint(run_dir)
    saved = ckpt_state.load_trainer_state(ckpt) if ckpt is not None else None
    if ckpt is not None:
        task.load_weights(ckpt.path)
    trainer = Trainer(task, cfg, env, total_steps)
    progress = trainer_state.restore(saved, task, trainer, cfg, env)
    end_step = min(total_steps, cfg.stop_at_step) if cfg.stop_at_step else total_steps
    if env.is_main:
        truncate_metrics(run_dir, progress.step)
    logger = MetricsLogger(run_dir, enabled=env.is_main, start_step=progress.step,
                           total_steps=total_steps, title=title, wandb_mode=cfg.wandb,
                           wandb_project=cfg.wandb_project, wandb_config=wandb_config)
    if ckpt is not None:
        logger.message(f"resuming from {ckpt.path} (step {progress.step}/{total_steps})")
    logger.runtime(progress.step, trainer.runtime.to_dict(), total_steps)
    if progress.step >= end_step:
        logger.message(f"nothing to train: the run is at step {progress.step} (this run ends "
                       f"at {end_step})")
    run = _Run(task, trainer, cfg, run_dir, env, logger, progress, end_step, checkpoint_at_end,
               ckpt.path if ckpt else None)
    interrupted, repeat_aborts = False, not env.is_distributed and outer_launch() is None
    try:
        with StopRequest(repeat_aborts=repeat_aborts, announce=env.is_main) as stop:
            if saved is not None:
                run.resume_branch()
            while progress.step < end_step and not interrupted:
                interrupted = run.step(stop)
    finally:
        logger.close()
    env.barrier()
    return LoopResult(progress.step, total_steps, progress.tokens, interrupted, run.last_ckpt,
                      run.eval_loss)
