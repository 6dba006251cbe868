"""One optimizer step of a task (`Trainer`): how the step runs on this device
(`RuntimeChoices`: autocast, TF32, fused AdamW, compile, pinned batches), gradient
accumulation with DDP sync on the last micro-batch only, clipping, the lr of the
schedule, a decay branch off the main line, and the held-out evaluation.

Global batch and ranks: one optimizer step reads G = batch_size x grad_accum x
world_size windows. Rank r takes the r-th contiguous block of batch_size x grad_accum of
them and splits it into grad_accum micro-batches; no gradient all-reduce happens on the
first grad_accum - 1 of them (`no_sync`). The loss of each micro-step is divided by
grad_accum, so 4 x (B/4) gives the 1 x B gradient.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Generic

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from timoe_core.config import TrainingConfig
from timoe_core.train import rng
from timoe_core.train.distributed import DistEnv
from timoe_core.train.optim import build_adamw
from timoe_core.train.schedule import Schedule, WSDSchedule
from timoe_core.train.task import BatchT, Branch, EvalBatchT, TrainTask


def amp_enabled(cfg: TrainingConfig, device: torch.device) -> bool:
    """bf16 autocast: on CUDA by default; on CPU only when asked (--amp)."""
    return device.type == "cuda" if cfg.amp is None else bool(cfg.amp)


@dataclass(frozen=True)
class RuntimeChoices:
    """How the step runs on this device, resolved from the config's auto (None) values.

    Written as the first metrics.jsonl record of every invocation ({"type": "runtime"}).
    On CPU every choice is off unless asked for, so CPU results never depend on them.
    """

    device: str
    amp: bool  # bf16 autocast (never by default on CPU: no bf16 units there)
    compile: bool  # torch.compile of the trained module
    tf32: bool  # TF32 matmuls (CUDA only)
    fused_adamw: bool  # one fused kernel for the whole AdamW update (CUDA)
    pin_memory: bool  # batches copied from pinned host memory, non_blocking (CUDA)

    @classmethod
    def resolve(cls, cfg: TrainingConfig, device: torch.device, params: Iterable[nn.Parameter]
                ) -> RuntimeChoices:
        cuda = device.type == "cuda"
        on_cuda = all(p.is_cuda for p in params)
        return cls(
            device=str(device),
            amp=amp_enabled(cfg, device),
            compile=cuda if cfg.compile is None else bool(cfg.compile),
            tf32=cuda and cfg.tf32,
            fused_adamw=on_cuda if cfg.fused_adamw is None else bool(cfg.fused_adamw),
            pin_memory=cuda,  # what every task's batch() does on CUDA
        )

    def to_dict(self) -> dict[str, str | bool]:
        return asdict(self)


def make_schedule(cfg: TrainingConfig, total_steps: int) -> WSDSchedule:
    return WSDSchedule(
        peak_lr=cfg.lr,
        total_steps=total_steps,
        warmup_fraction=cfg.warmup_fraction,
        decay_fraction=cfg.decay_fraction,
        min_lr_ratio=cfg.min_lr_ratio,
        decay_shape=cfg.decay_shape,
    )


class Trainer(Generic[BatchT, EvalBatchT]):
    """One optimizer step of a task: the part of the loop that runs every step.

    `step(step, micro_batches)` = `accumulate(micro_batches)` (forward/backward of each
    micro-batch, DDP sync on the last only) + `apply(step)` (lr from the schedule,
    clipping, AdamW, zero grads). Nothing here reads a tensor back to the host.
    """

    def __init__(self, task: TrainTask[BatchT, EvalBatchT], cfg: TrainingConfig, env: DistEnv,
                 total_steps: int) -> None:
        self.task = task
        self.cfg = cfg
        self.env = env
        self.raw = task.model.to(env.device)
        self.params = [p for p in self.raw.parameters() if p.requires_grad]
        self.runtime = RuntimeChoices.resolve(cfg, env.device, self.params)
        if self.runtime.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.optimizer = build_adamw(
            self.raw, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2),
            fused=self.runtime.fused_adamw,
        )
        self.schedule: Schedule = (task.own_schedule(cfg, total_steps)
                                   or make_schedule(cfg, total_steps))
        self.amp = self.runtime.amp
        model: nn.Module = self.raw
        if self.runtime.compile:
            compiled = torch.compile(model)
            assert isinstance(compiled, nn.Module)  # a module compiles to an OptimizedModule
            model = compiled
        self.ddp = env.is_distributed
        if self.ddp:
            model = DistributedDataParallel(
                model,
                device_ids=[env.device.index] if env.device.type == "cuda" else None,
                find_unused_parameters=task.find_unused_parameters,
            )
        self.model = model

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def accumulate(
        self, micro_batches: Iterable[BatchT], n_micro: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward/backward over `n_micro` micro-batches; mean loss and metrics (detached)."""
        loss_sum: torch.Tensor | None = None
        metric_sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            last = i == n_micro - 1
            model = self.model
            sync = (model.no_sync() if not last and isinstance(model, DistributedDataParallel)
                    else contextlib.nullcontext())
            with sync:
                with self.autocast():
                    loss, metrics = self.task.loss(self.model, batch)
                (loss / n_micro).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            for k, v in metrics.items():
                v = v.detach().float()
                metric_sums[k] = v if k not in metric_sums else metric_sums[k] + v
        assert loss_sum is not None, "no micro-batches"
        return loss_sum.float() / n_micro, {k: v / n_micro for k, v in metric_sums.items()}

    def apply(self, step: int, lr: float | None = None) -> torch.Tensor | None:
        """Clip, set the lr of `step` (or `lr`), AdamW step, zero grads. Returns the grad
        norm."""
        lr = self.schedule.lr(step) if lr is None else lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        grad_norm = None
        if self.cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def step(
        self, step: int, micro_batches: Iterable[BatchT], n_micro: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        loss, metrics = self.accumulate(micro_batches, n_micro)
        return loss, metrics, self.apply(step)

    def run_branch(self, branch: Branch, global_batch: int) -> None:
        """`branch` off the current state, which is restored afterwards (see Branch)."""
        env, cfg = self.env, self.cfg
        per_rank = cfg.batch_size * cfg.grad_accum
        weights = {k: v.detach().clone() for k, v in self.raw.state_dict().items()}
        optimizer = copy.deepcopy(self.optimizer.state_dict())
        rng_state = rng.capture_rng(env.device)
        for i in range(branch.steps):
            mine = branch.take(i, global_batch)[env.rank * per_rank : (env.rank + 1) * per_rank]
            self.accumulate(micro_batches(self.task, mine, cfg.grad_accum, env.device),
                            cfg.grad_accum)
            self.apply(-1, lr=branch.lr(i))
        if env.is_main:
            branch.save()
        env.barrier()
        self.raw.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer)
        rng.restore_rng(rng_state, env.device)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean eval loss over the task's eval windows, shared out across ranks."""
        indices = self.task.eval_indices()
        if indices is None or len(indices) == 0:
            return None
        mine = np.array_split(np.asarray(indices), self.env.world_size)[self.env.rank]
        totals = torch.zeros(2, dtype=torch.float64, device=self.env.device)
        self.raw.eval()
        try:
            bs = self.cfg.batch_size
            for start in range(0, len(mine), bs):
                chunk = mine[start : start + bs]
                with self.autocast():
                    loss = self.task.eval_loss(
                        self.raw, self.task.eval_batch(chunk, self.env.device)
                    )
                totals[0] += loss.double() * len(chunk)
                totals[1] += len(chunk)
        finally:
            self.raw.train()
        totals = self.env.sum(totals)
        return float(totals[0] / totals[1])



def micro_batches(task: TrainTask[BatchT, EvalBatchT], indices: np.ndarray, n_micro: int,
                  device: torch.device) -> Iterator[BatchT]:
    """Load micro-batches lazily: the next one is read while the device still computes."""
    for part in np.split(indices, n_micro):
        yield task.batch(part, device)
