"""learned-avg: a causal router learns per-token weights; every expert is frozen.

Experts are never in the optimizer, run under no_grad, in eval mode. Each training
window's own year is its query date, so the router learns on windows of every data
year with the experts eligible as of that year. The loss is -mean log P_mix(target) +
the router's auxiliary losses, computed from each eligible expert's target-token
log-probs only (`TiMoE.forward`), never from a vocab-sized mixture.

Log-prob cache (`cache_log_probs`, on by default): since the experts are frozen, their
target log-probs of every training window are computed once, stored as fp16 in
OUT/logprob-cache (train/logprob_cache.py), and read back instead of running the
experts. It is built before the first step when the run reads more windows than one
epoch holds (otherwise it could never be reused); a complete cache of the same key is
reused by any later run in OUT (a resumed or extended one). The held-out evaluation
always runs the experts.

Run dir, resume, workers, Ctrl-C and logging are the shared job driver's
(train/job.py, train/mixture_run.py); OUT is the bundle once training ends.

Staged (policy point-in-time, the default): the recipe's `train` (train/recipe.py)
hands the run to train/staging.py, which trains one router stage per data cutoff
of the experts' artefacts, each through this task (`stage_task`) on the stage's
windows, and writes a router snapshot per stage; `--policy inclusive` trains the single
router over every year (`make_task`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from timoe_core.config import TrainRouterConfig
from timoe_core.data.manifest import data_read_up_to
from timoe_core.data.windows import TokenWindows
from timoe_core.model.bundle import load_router_weights, save_router_weights
from timoe_core.model.mixture import MixtureOutput, TiMoE
from timoe_core.model.router import Router
from timoe_core.model.weighting import LEARNED_AVG
from timoe_core.train.distributed import DistEnv
from timoe_core.train.job import main_print
from timoe_core.train.logprob_cache import LogProbCache, cache_key, token_files_fingerprint
from timoe_core.train.mixture_run import MixturePlan
from timoe_core.train.mixture_task import MixtureTask
from timoe_core.train.orders import ShuffledOrder
from timoe_core.train.recipe import MixtureRecipe
from timoe_core.train.stage import Stage
from timoe_core.train.trainer import amp_enabled

# A learned-avg micro-batch: inputs, targets, each row's year (its query date), and the
# frozen experts' cached target log-probs of these windows (None: no log-prob cache).
LearnedAvgBatch = tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor | None]


class LearnedAvgTask(MixtureTask[LearnedAvgBatch]):
    """The router alone is trained (TrainTask protocol, see train/task.py); the experts stay
    in the mixture, frozen."""

    name = "learned-avg"

    def __init__(
        self,
        mix: TiMoE,
        train: TokenWindows,
        val: TokenWindows | None,
        seed: int,
        eval_windows: int,
        cache: LogProbCache | None = None,
    ) -> None:
        super().__init__(mix, train, val, eval_windows)
        assert mix.router is not None
        self.router: Router = mix.router
        self.model = self.router
        self.cache = cache
        self.order = ShuffledOrder(len(train), lambda epoch: train.shuffled_indices(seed, epoch))

    def mixture(self, model: torch.nn.Module) -> Callable[..., MixtureOutput]:
        # The weights come from `model` (the router as the loop wrapped it, DDP and/or
        # compiled), so that its gradients are synchronised.
        return functools.partial(self.mix, router=model)

    def batch(self, indices: np.ndarray, device: torch.device) -> LearnedAvgBatch:
        rows, years = self.train.batch(indices)
        rows = self._to_device(rows, device)
        cached = None
        if self.cache is not None:
            cached = self._to_device(self.cache.read(indices), device)
        return rows[:, :-1], rows[:, 1:], years.tolist(), cached

    def loss(self, model: torch.nn.Module, batch: LearnedAvgBatch
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y, years, cached = batch
        return self.mixture_loss(model, x, y, years, cached_expert_log_probs=cached)

    def save_weights(self, directory: Path) -> None:
        save_router_weights(directory, self.router)

    def load_weights(self, directory: Path) -> None:
        self.router.load_state_dict(load_router_weights(directory))


def make_task(plan: MixturePlan, mix: TiMoE, env: DistEnv) -> LearnedAvgTask:
    cfg = plan.cfg
    assert isinstance(cfg, TrainRouterConfig)
    train = plan.train_windows()
    cache = None
    if cfg.cache_log_probs:
        amp = amp_enabled(cfg, env.device)
        key = cache_key(
            data_files_sha256=plan.data_files_sha256,
            split="train",
            years=plan.years,
            seq_len=plan.seq_len,
            policy=mix.policy,
            experts=plan.expert_sha256,
            compute_dtype="bfloat16" if amp else "float32",
            token_files=token_files_fingerprint(train.data_dir, "train", plan.years),
        )
        reads = plan.total_steps * plan.global_batch
        say = main_print(env)

        def log(text: str) -> None:
            say(text, highlight=False)

        if reads > len(train) or LogProbCache.exists(plan.run_dir, key):
            cache = LogProbCache.open_or_build(
                plan.run_dir,
                key,
                train,
                mix,
                env,
                batch_size=cfg.batch_size * cfg.grad_accum,
                autocast=lambda: torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=amp),
                log=log,
            )
        else:
            log(
                f"log-prob cache not built: the run reads {reads} windows, at most one epoch "
                f"of {len(train)}, so nothing would be read back"
            )
    return LearnedAvgTask(
        mix,
        train,
        plan.val_windows(),
        seed=cfg.seed,
        eval_windows=cfg.eval_batches * cfg.batch_size,
        cache=cache,
    )


def stage_task(stage: Stage) -> LearnedAvgTask:
    """One stage's router training: the stage's windows, its experts' log-probs cached
    when the stage reads more windows than it holds."""
    cfg, windows, env = stage.cfg, stage.windows, stage.env
    cache = None
    if (isinstance(cfg, TrainRouterConfig) and cfg.cache_log_probs
            and stage.steps * cfg.batch_size * cfg.grad_accum > len(windows)):
        key = cache_key(
            # what the stage's windows read: its year up to its cutoff
            data_files_sha256=data_read_up_to(windows.data_dir, windows.manifest,
                                              [stage.cutoff.year], stage.cutoff),
            split="train", years=[stage.cutoff.year], seq_len=windows.seq_len,
            policy="point-in-time",
            experts={r.key: r.sha256 or "" for r in stage.view.artefacts},
            compute_dtype="bfloat16" if stage.amp else "float32",
            token_files=token_files_fingerprint(windows.data_dir, "train", [stage.cutoff.year]),
        )
        cache = LogProbCache.open_or_build(
            stage.run_dir, key, windows, stage.view, env,
            batch_size=cfg.batch_size * cfg.grad_accum,
            autocast=lambda: torch.autocast(env.device.type, dtype=torch.bfloat16,
                                            enabled=stage.amp),
        )
    return LearnedAvgTask(stage.view, windows, stage.val_windows, seed=cfg.seed,
                          eval_windows=stage.eval_windows, cache=cache)


RECIPE = MixtureRecipe(LEARNED_AVG, TrainRouterConfig, make_task, stage_task, __name__)
