"""The training loop every training command shares (train-expert, train-router, coadapt).

A command describes *what* to train as a `TrainTask`; `run_training` does the rest the
same way for all: DDP, the warmup–stable–decay schedule, AdamW, gradient accumulation,
clipping, AMP, torch.compile, evaluation, checkpoints and resume, Ctrl-C,
metrics.jsonl / rich progress / wandb.

On CUDA by default (`RuntimeChoices`, each switchable in the config): bf16 autocast,
TF32 matmuls, fused AdamW, torch.compile, batches from pinned memory copied
non_blocking; and a step never reads a tensor back to the host (loss and metrics are
summed on the device and read once per log step), so the GPU is never waited for
between logs. On CPU all of these are off unless asked for.

The TrainTask protocol
----------------------
Subclass `TrainTask` and set or override:

    model: nn.Module
        Everything that is trained, as ONE module (use a small wrapper module to train
        several, e.g. a router plus experts). Its trainable parameters (requires_grad)
        go to AdamW; it is what DDP wraps and what torch.compile compiles. Frozen parts
        may live inside it with requires_grad=False.
    order: DataOrder
        Which windows each optimizer step reads. `order.take(position, n)` returns the
        global indices of the next `n` windows and the position after them; it must be
        a pure function of (position, n) so all ranks agree and resume is exact.
        `ShuffledOrder` (train-expert: one permutation per epoch) and `GroupedOrder`
        (coadapt: every step's windows come from one group, e.g. one slice) are here.
    tokens_per_window: int
        Tokens one window contributes to the token count (the sequence length).
    batch(indices, device) -> batch
        Load the windows `indices` (a 1-D int array) and move them to `device`.
    loss(model, batch) -> (loss, metrics)
        Forward pass of one micro-batch. `model` is the wrapped module (DDP and/or
        compiled): call it, not `self.model`, so gradient sync works. `loss` is the
        mean loss (a 0-d tensor); `metrics` a dict of extra 0-d tensors to log
        (averaged over micro-steps and ranks at log steps), may be empty.
    eval_indices() -> array or None
        The validation windows (global indices into what `eval_batch` reads), or None.
    eval_batch(indices, device), eval_loss(model, batch) -> 0-d tensor
        Defaults: `batch` and `loss(...)[0]`. Called with the unwrapped module in
        eval mode under no_grad.
    save_weights(directory) / load_weights(directory)
        Write/read the trained weights as safetensors files in `directory` (a
        checkpoint folder; sub-folders allowed, e.g. experts/2013-2014/...). Every
        file written there is checksummed and linked into the run dir at the same
        relative path as the run's current weights. Never write trainer_state.pt.
    find_unused_parameters: bool
        Passed to DDP (True when a step trains only part of `model`, as in coadapt).

Global batch and ranks: one optimizer step reads G = batch_size x grad_accum x
world_size windows, `order.take(position, G)`. Rank r takes the r-th contiguous block
of batch_size x grad_accum of them and splits it into grad_accum micro-batches; no
gradient all-reduce happens on the first grad_accum - 1 of them (`no_sync`). The loss
of each micro-step is divided by grad_accum, so 4 x (B/4) gives the 1 x B gradient.

Resume: `run_training` resumes from the run dir's latest checkpoint when there is one
(the command decides beforehand whether that is allowed): weights, optimizer, step,
tokens, data position and every rank's RNG states are restored, so the rest of the run
is the one an uninterrupted run would have done (bitwise in one process).

Writing a training command (timoe_core.train.expert is the worked example)
---------------------------------------------------------------------------
1. Check every input first and raise TimoeError (nothing written yet); decide the run
   dir with `run_dir.decide_run_dir(run_dir, resume=, overwrite=, restart=, conflicts=)`
   where `conflicts()` names the recorded settings the new flags change.
2. Not inside an outer launcher: `run_dir.open_run_dir(run_dir, action)`, then write
   run.json and `save_config(run_dir.config_to_save(cfg), run_dir)`.
3. `launch.launch(worker, payload, LaunchSpec.from_config(cfg, run_dir))` with a
   module-level `worker(payload) -> exit code`; one worker runs in this process.
4. In the worker: `env = distributed.init_workers(cfg.device)`, seed and build the
   task, `result = run_training(task, cfg, run_dir, env, total_steps)`, `env.close()`;
   a spawned worker that was interrupted does `sys.exit(EXIT_INTERRUPTED)`.
5. `result.interrupted` / exit code 130: raise `TrainingInterrupted` (the CLI prints
   how to resume and exits 130).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from timoe_core.config import TrainingConfig
from timoe_core.errors import TimoeError
from timoe_core.io import open_for_append
from timoe_core.train import state as ckpt_state
from timoe_core.train.distributed import DistEnv, StopRequest, outer_launch
from timoe_core.train.metrics import MetricsLogger, truncate_metrics
from timoe_core.train.optim import build_adamw
from timoe_core.train.schedule import Schedule, WSDSchedule

# ------------------------------------------------------------------ data order


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands: epoch, and windows of it already consumed."""

    epoch: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataPosition:
        return cls(int(d["epoch"]), int(d["offset"]))


class DataOrder(Protocol):
    def take(self, position: DataPosition, n: int) -> tuple[np.ndarray, DataPosition]: ...


class ShuffledOrder:
    """Each epoch a fresh permutation of the windows; steps read consecutive runs of it.

    `permutation(epoch)` must be fixed by the epoch (for token windows:
    `TokenWindows.shuffled_indices(seed, epoch)`). A step never straddles epochs: a
    remainder too short for a step is skipped.
    """

    def __init__(self, num_windows: int, permutation: Callable[[int], np.ndarray]) -> None:
        self.num_windows = num_windows
        self._permute = permutation
        self._cache: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._permute(epoch))
        return self._cache[1]

    def take(self, position: DataPosition, n: int) -> tuple[np.ndarray, DataPosition]:
        if n > self.num_windows:
            raise ValueError(f"a step of {n} windows exceeds the {self.num_windows} available")
        epoch, offset = position.epoch, position.offset
        if offset + n > self.num_windows:
            epoch, offset = epoch + 1, 0
        out = self.permutation(epoch)[offset : offset + n]
        return out, DataPosition(epoch, offset + n)


class GroupedOrder:
    """Every step's windows share one group (e.g. one time slice).

    Each epoch: the windows of every group are permuted (seed, epoch, group), cut into
    blocks of one step, and the blocks of all groups are shuffled together (seed,
    epoch). Partial blocks are skipped. `groups[i]` is the group of window i.
    """

    def __init__(self, groups: np.ndarray, seed: int) -> None:
        self.groups = np.asarray(groups)
        self.seed = seed
        self._cache: tuple[int, int, np.ndarray] | None = None

    def blocks(self, epoch: int, n: int) -> np.ndarray:
        """(num_blocks, n) window indices of this epoch, in step order."""
        if self._cache is None or self._cache[:2] != (epoch, n):
            parts = []
            for k, g in enumerate(np.unique(self.groups)):
                members = np.flatnonzero(self.groups == g)
                members = np.random.default_rng([self.seed, epoch, k]).permutation(members)
                usable = len(members) // n * n
                parts.append(members[:usable].reshape(-1, n))
            blocks = np.concatenate(parts) if parts else np.zeros((0, n), dtype=np.int64)
            blocks = blocks[np.random.default_rng([self.seed, epoch]).permutation(len(blocks))]
            self._cache = (epoch, n, blocks)
        return self._cache[2]

    def take(self, position: DataPosition, n: int) -> tuple[np.ndarray, DataPosition]:
        epoch, block = position.epoch, math.ceil(position.offset / n)
        if block >= len(self.blocks(epoch, n)):
            epoch, block = epoch + 1, 0
            if len(self.blocks(epoch, n)) == 0:
                raise ValueError(f"no group has {n} windows for one step")
        return self.blocks(epoch, n)[block], DataPosition(epoch, (block + 1) * n)


# ------------------------------------------------------------------------ task


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


class TrainTask:
    """What a training command trains; see the module docstring for the protocol."""

    name: str = "task"
    model: nn.Module
    order: DataOrder
    tokens_per_window: int
    find_unused_parameters: bool = False
    # AdamW state a new run starts from (train-expert --init-optimizer); a resumed run
    # takes its own checkpoint's instead.
    start_optimizer_state: dict[str, Any] | None = None

    def batch(self, indices: np.ndarray, device: torch.device) -> Any:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def eval_indices(self) -> np.ndarray | None:
        return None

    def eval_batch(self, indices: np.ndarray, device: torch.device) -> Any:
        return self.batch(indices, device)

    def eval_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.loss(model, batch)[0]

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

    def state_dict(self) -> dict[str, Any] | None:
        """Training state of the task's own that a resume needs (saved in the trainer
        checkpoint as "task_state"), or None."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, from a checkpoint."""


# --------------------------------------------------------------------- trainer


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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def make_schedule(cfg: TrainingConfig, total_steps: int) -> WSDSchedule:
    return WSDSchedule(
        peak_lr=cfg.lr,
        total_steps=total_steps,
        warmup_fraction=cfg.warmup_fraction,
        decay_fraction=cfg.decay_fraction,
        min_lr_ratio=cfg.min_lr_ratio,
        decay_shape=cfg.decay_shape,
    )


class Trainer:
    """One optimizer step of a task: the part of the loop that runs every step.

    `step(step, micro_batches)` = `accumulate(micro_batches)` (forward/backward of each
    micro-batch, DDP sync on the last only) + `apply(step)` (lr from the schedule,
    clipping, AdamW, zero grads). Nothing here reads a tensor back to the host.
    """

    def __init__(self, task: TrainTask, cfg: TrainingConfig, env: DistEnv, total_steps: int):
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
            model = torch.compile(model)  # type: ignore[assignment]
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
        self, micro_batches: Iterable[Any], n_micro: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward/backward over `n_micro` micro-batches; mean loss and metrics (detached)."""
        loss_sum: torch.Tensor | None = None
        metric_sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            last = i == n_micro - 1
            sync = (contextlib.nullcontext() if (last or not self.ddp)
                    else cast(DistributedDataParallel, self.model).no_sync())
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
        self, step: int, micro_batches: Iterable[Any], n_micro: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        loss, metrics = self.accumulate(micro_batches, n_micro)
        return loss, metrics, self.apply(step)

    def run_branch(self, branch: Branch, global_batch: int) -> None:
        """`branch` off the current state, which is restored afterwards (see Branch)."""
        env, cfg = self.env, self.cfg
        per_rank = cfg.batch_size * cfg.grad_accum
        weights = {k: v.detach().clone() for k, v in self.raw.state_dict().items()}
        optimizer = copy.deepcopy(self.optimizer.state_dict())
        rng = ckpt_state.capture_rng(env.device)
        for i in range(branch.steps):
            mine = branch.take(i, global_batch)[env.rank * per_rank : (env.rank + 1) * per_rank]
            self.accumulate(_micro_batches(self.task, mine, cfg.grad_accum, env.device),
                            cfg.grad_accum)
            self.apply(-1, lr=branch.lr(i))
        if env.is_main:
            branch.save()
        env.barrier()
        self.raw.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer)
        ckpt_state.restore_rng(rng, env.device)

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


# ------------------------------------------------------------------------ loop


@dataclass
class LoopResult:
    step: int
    total_steps: int
    tokens: int
    interrupted: bool
    checkpoint: Path | None
    eval_loss: float | None


def _micro_batches(
    task: TrainTask, indices: np.ndarray, n_micro: int, device: torch.device
) -> Iterator[Any]:
    """Load micro-batches lazily: the next one is read while the device still computes."""
    for part in np.split(indices, n_micro):
        yield task.batch(part, device)


def run_training(
    task: TrainTask,
    cfg: TrainingConfig,
    run_dir: Path,
    env: DistEnv,
    total_steps: int,
    *,
    title: str = "train",
    wandb_config: dict[str, Any] | None = None,
    checkpoint_at_end: bool = True,
) -> LoopResult:
    """Train `task` to `total_steps` (or cfg.stop_at_step), resuming from the latest
    checkpoint in `run_dir` if there is one. Every rank calls this.

    checkpoint_at_end False: no checkpoint at the last step (a staged router's stage,
    whose caller saves what it keeps and removes the trainer state at once; a kill
    before that reruns the stage from its last checkpoint, to the same weights)."""
    run_dir = Path(run_dir)
    device = env.device
    ckpt = ckpt_state.latest_checkpoint(run_dir)
    saved: dict[str, Any] | None = None
    if ckpt is not None:
        saved = ckpt_state.load_trainer_state(ckpt)
        task.load_weights(ckpt.path)
    trainer = Trainer(task, cfg, env, total_steps)
    step, tokens, elapsed, position = 0, 0, 0.0, DataPosition()
    if saved is not None:
        trainer.optimizer.load_state_dict(saved["optimizer"])
        trainer.schedule.load_state_dict(saved["schedule"])
        step, tokens, elapsed = saved["step"], saved["tokens"], saved["elapsed"]
        position = DataPosition.from_dict(saved["data"])
        task_state = saved.get("task_state")
        if task_state is not None:
            task.load_state_dict(task_state)
        if saved["world_size"] == env.world_size and len(saved["rng"]) == env.world_size:
            ckpt_state.restore_rng(saved["rng"][env.rank], device)
        else:
            ckpt_state.seed_all(ckpt_state.rank_seed(cfg.seed + step, env.rank))
    else:
        ckpt_state.seed_all(ckpt_state.rank_seed(cfg.seed, env.rank))
        if task.start_optimizer_state is not None:  # its moments; this run's hyperparameters
            fresh = trainer.optimizer.state_dict()
            trainer.optimizer.load_state_dict({**fresh, "state": task.start_optimizer_state[
                "state"]})

    end_step = min(total_steps, cfg.stop_at_step) if cfg.stop_at_step else total_steps
    per_rank = cfg.batch_size * cfg.grad_accum
    global_batch = per_rank * env.world_size
    tokens_per_step = global_batch * task.tokens_per_window
    if env.is_main:
        truncate_metrics(run_dir, step)
    logger = MetricsLogger(
        run_dir,
        enabled=env.is_main,
        start_step=step,
        total_steps=total_steps,
        title=title,
        wandb_mode=cfg.wandb,
        wandb_project=cfg.wandb_project,
        wandb_config=wandb_config,
    )
    if ckpt is not None:
        logger.message(f"resuming from {ckpt.path} (step {step}/{total_steps})")
    logger.runtime(step, trainer.runtime.to_dict(), total_steps)
    if step >= end_step:
        logger.message(f"nothing to train: the run is at step {step} (this run ends at {end_step})")
    windows_log = run_dir / "debug" / f"windows-rank{env.rank}.jsonl" if cfg.log_windows else None
    if windows_log is not None:
        windows_log.parent.mkdir(exist_ok=True)

    def save(at_step: int) -> Path:
        rngs = env.gather_to_main(ckpt_state.capture_rng(device))
        path = None
        if env.is_main:
            trainer_state = {
                "task": task.name,
                "tokens": tokens,
                "elapsed": elapsed,
                "data": position.to_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "schedule": trainer.schedule.state_dict(),
                "rng": rngs,
                "world_size": env.world_size,
            }
            task_state = task.state_dict()
            if task_state is not None:
                trainer_state["task_state"] = task_state
            path = ckpt_state.write_checkpoint(
                run_dir, at_step, task.save_weights, trainer_state, keep=cfg.keep_checkpoints
            ).path
        return env.broadcast(path)

    last_ckpt: Path | None = ckpt.path if ckpt else None
    eval_loss: float | None = None
    interrupted = False
    log_loss = torch.zeros((), device=device)
    log_metrics: dict[str, torch.Tensor] = {}
    start, elapsed_before = time.perf_counter(), elapsed
    log_steps, log_tokens, log_t0 = 0, 0, start
    repeat_aborts = not env.is_distributed and outer_launch() is None
    try:
        with StopRequest(repeat_aborts=repeat_aborts, announce=env.is_main) as stop:
            resumed_branch = task.branch_after(step) if saved is not None else None
            if resumed_branch is not None and not resumed_branch.done:  # stopped inside it
                logger.message(f"step {step}: decay branch of {resumed_branch.steps} steps")
                trainer.run_branch(resumed_branch, global_batch)
            while step < end_step:
                indices, next_position = task.order.take(position, global_batch)
                mine = indices[env.rank * per_rank : (env.rank + 1) * per_rank]
                if windows_log is not None:
                    with open_for_append(windows_log) as f:
                        f.write(json.dumps({"step": step, "windows": mine.tolist()}) + "\n")
                loss, metrics, grad_norm = trainer.step(
                    step, _micro_batches(task, mine, cfg.grad_accum, device), cfg.grad_accum
                )
                step += 1
                task.after_step(step, env.is_main)
                ckpt_state.fault_point(env.rank, step)  # test hook, inert unless set
                position = next_position
                tokens += tokens_per_step
                log_loss += loss
                for k, v in metrics.items():
                    log_metrics[k] = log_metrics.get(k, 0) + v
                log_steps += 1
                log_tokens += tokens_per_step
                stopping = env.any(stop.requested)
                done = step == end_step
                logger.progress(step)
                if step % cfg.log_every == 0 or step == 1 or done or stopping:
                    names = sorted(log_metrics)
                    packed = torch.stack([log_loss] + [log_metrics[k] for k in names]).float()
                    packed = env.sum(packed) / (env.world_size * log_steps)
                    values = packed.tolist()
                    if not math.isfinite(values[0]):
                        raise TimoeError(
                            f"the loss became {values[0]} at step {step}: training diverged; "
                            f"lower --lr (now {cfg.lr}) or raise --warmup-fraction"
                        )
                    now = time.perf_counter()  # after the sync of .tolist()
                    elapsed = elapsed_before + now - start
                    record = {
                        "step": step,
                        "loss": values[0],
                        "lr": trainer.schedule.lr(step - 1),
                        "grad_norm": float(grad_norm) if grad_norm is not None else None,
                        "tokens": tokens,
                        "tokens_per_s": log_tokens / max(now - log_t0, 1e-9),
                        "elapsed": elapsed,
                    } | dict(zip(names, values[1:]))
                    logger.train(record)
                    log_loss = torch.zeros((), device=device)
                    log_metrics, log_steps, log_tokens, log_t0 = {}, 0, 0, now
                paused = time.perf_counter()  # eval and checkpoints: not in tokens/s
                if (cfg.eval_every and step % cfg.eval_every == 0) or done:
                    eval_loss = trainer.evaluate()
                    elapsed = elapsed_before + time.perf_counter() - start
                    if eval_loss is not None:
                        logger.eval(
                            {
                                "step": step,
                                "eval_loss": eval_loss,
                                "eval_ppl": math.exp(min(eval_loss, 50.0)),
                                "tokens": tokens,
                                "elapsed": elapsed,
                            }
                        )
                branch = None if stopping else task.branch_after(step)
                if (
                    (cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                     and not (done and not checkpoint_at_end))
                    or (done and checkpoint_at_end)
                    or stopping or branch is not None  # a branch resumes from its start
                ):
                    elapsed = elapsed_before + time.perf_counter() - start
                    last_ckpt = save(step)
                if branch is not None and not branch.done:
                    logger.message(f"step {step}: decay branch of {branch.steps} steps")
                    trainer.run_branch(branch, global_batch)
                log_t0 += time.perf_counter() - paused
                if stopping:
                    interrupted = True
                    break
    finally:
        logger.close()
    env.barrier()
    return LoopResult(step, total_steps, tokens, interrupted, last_ckpt, eval_loss)
