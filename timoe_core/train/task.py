"""The TrainTask protocol: what a training command trains, for the shared loop.

Subclass `TrainTask[Batch, EvalBatch]` (the types of one training micro-batch and of one
held-out batch, as the task's `batch` and `eval_batch` return them) and set or override:

    model: nn.Module
        Everything that is trained, as ONE module (use a small wrapper module to train
        several, e.g. a router plus experts). Its trainable parameters (requires_grad)
        go to AdamW; it is what DDP wraps and what torch.compile compiles. Frozen parts
        may live inside it with requires_grad=False.
    order: DataOrder
        Which windows each optimizer step reads (train/orders.py). `order.take(position,
        n)` returns the global indices of the next `n` windows and the position after
        them; it must be a pure function of (position, n) so all ranks agree and resume
        is exact.
    tokens_per_window: int
        Tokens one window contributes to the token count (the sequence length).
    batch(indices, device) -> Batch
        Load the windows `indices` (a 1-D int array) and move them to `device`.
    loss(model, batch) -> (loss, metrics)
        Forward pass of one micro-batch. `model` is the wrapped module (DDP and/or
        compiled): call it, not `self.model`, so gradient sync works. `loss` is the
        mean loss (a 0-d tensor); `metrics` a dict of extra 0-d tensors to log
        (averaged over micro-steps and ranks at log steps), may be empty.
    eval_indices() -> array or None
        The validation windows (global indices into what `eval_batch` reads), or None
        (the default: no evaluation, and the two below are never called).
    eval_batch(indices, device) -> EvalBatch, eval_loss(model, batch) -> 0-d tensor
        Called with the unwrapped module in eval mode under no_grad.
    save_weights(directory) / load_weights(directory)
        Write/read the trained weights as safetensors files in `directory` (a
        checkpoint folder; sub-folders allowed, e.g. experts/2013-2014/...). Every
        file written there is checksummed and linked into the run dir at the same
        relative path as the run's current weights. Never write trainer_state.pt.
    find_unused_parameters: bool
        Passed to DDP (True when a step trains only part of `model`, as in coadapt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import nn

from timoe_core.config import TrainingConfig
from timoe_core.train.orders import DataOrder
from timoe_core.train.schedule import Schedule

# A task's training micro-batch and held-out batch, as its `batch` / `eval_batch` make them.
BatchT = TypeVar("BatchT")
EvalBatchT = TypeVar("EvalBatchT")

# A state a task saves with the trainer's (`TrainTask.state_dict`): tensors and plain values.
TaskState = dict[str, object]


@dataclass
class Branch:
    """A decay branch off the main line after a main step (train-expert's snapshots).

    The loop checkpoints the pre-branch state, runs `steps` optimizer steps reading
    `take(i, n)` (the windows of branch step i) at learning rate `lr(i)`, calls `save()`
    on rank 0 (the snapshot), then restores weights, optimizer and RNG to the pre-branch
    state: the main line goes on bitwise as if the branch had not happened. `done`: the
    snapshot is already on disk (a resumed run), so the branch is skipped."""

    steps: int
    take: Callable[[int, int], np.ndarray]
    lr: Callable[[int], float]
    save: Callable[[], None]
    done: bool = False


class TrainTask(Generic[BatchT, EvalBatchT]):
    """What a training command trains; see the module docstring for the protocol."""

    name: str = "task"
    model: nn.Module
    order: DataOrder
    tokens_per_window: int
    find_unused_parameters: bool = False
    # AdamW state a new run starts from (train-expert --init-optimizer); a resumed run
    # takes its own checkpoint's instead.
    start_optimizer_state: dict[str, object] | None = None

    def batch(self, indices: np.ndarray, device: torch.device) -> BatchT:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: BatchT
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def eval_indices(self) -> np.ndarray | None:
        return None

    def eval_batch(self, indices: np.ndarray, device: torch.device) -> EvalBatchT:
        raise NotImplementedError

    def eval_loss(self, model: nn.Module, batch: EvalBatchT) -> torch.Tensor:
        raise NotImplementedError

    def save_weights(self, directory: Path) -> None:
        raise NotImplementedError

    def load_weights(self, directory: Path) -> None:
        raise NotImplementedError

    def own_schedule(self, cfg: TrainingConfig, total_steps: int) -> Schedule | None:
        """A schedule of the task's own, or None for the run's warmup-stable-decay over
        `total_steps`."""
        return None

    def branch_after(self, step: int) -> Branch | None:
        """The decay branch to run once `step` main steps are done, if any."""
        return None

    def after_step(self, step: int, is_main: bool) -> None:
        """Called on every rank once main step `step` (1-based) is applied, never after a
        branch step (train-expert's averaged snapshots: `is_main` writes them)."""

    def state_dict(self) -> TaskState | None:
        """Training state of the task's own that a resume needs (saved in the trainer
        checkpoint as "task_state"), or None."""
        return None

    def load_state_dict(self, state: TaskState) -> None:
        """Restore what `state_dict` returned, from a checkpoint."""

