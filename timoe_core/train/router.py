"""`train_router(cfg)`: `timoe train-router` — a TiMoE bundle over expert run dirs.

--strategy avg: nothing to train; the bundle (timoe.json, no router) is written at once.

--strategy learned-avg: the router learns per-token weights; every expert is frozen
(never in the optimizer, run under no_grad, in eval mode). Each training window's own
year is its query date, so the router learns on windows of every data year with the
experts eligible as of that year (DESIGN.md §2). The loss is
-mean log P_mix(target) + the router's auxiliary losses, computed from each eligible
expert's target-token log-probs only (`TiMoE.forward`), never from a vocab-sized
mixture.

Log-prob cache (`cache_log_probs`, on by default): since the experts are frozen, their
target log-probs of every training window are computed once, stored as fp16 in
OUT/logprob-cache (logprob_cache.py), and read back instead of running the experts. It
is built before the first step when the run reads more windows than one epoch holds
(otherwise it could never be reused); a complete cache of the same key is reused by
any later run in OUT (a resumed or extended one). The held-out evaluation always runs
the experts.

Run dir, resume, workers, Ctrl-C and logging are train-expert's (mixture_run.py and
loop.py); OUT is the bundle once training ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from timoe_core.config import TrainRouterConfig, save_config
from timoe_core.errors import TimoeError
from timoe_core.lock import output_lock
from timoe_core.model.mixture import (
    BUNDLE_FILENAME,
    TiMoE,
    load_router_weights,
    save_router_weights,
)
from timoe_core.model.router import Router
from timoe_core.train.distributed import DistEnv
from timoe_core.train.logprob_cache import LogProbCache, cache_key, token_files_fingerprint
from timoe_core.train.loop import ShuffledOrder, amp_enabled
from timoe_core.train.mixture_run import (
    MIXTURE_RUN_FILENAME,
    MixturePlan,
    MixtureTask,
    clear_bundle_artifacts,
    mixture_options,
    run_mixture_training,
    train_in_worker,
    worker_exit,
)


class LearnedAvgTask(MixtureTask):
    """The router alone is trained (TrainTask protocol, see loop.py); the experts stay
    in the mixture, frozen."""

    name = "learned-avg"

    def __init__(
        self,
        mix: TiMoE,
        train: Any,
        val: Any,
        seed: int,
        eval_windows: int,
        cache: LogProbCache | None = None,
    ) -> None:
        super().__init__(mix, train, val, eval_windows)
        assert mix.router is not None
        self.router: Router = mix.router  # type: ignore[assignment]
        self.model = self.router
        self.cache = cache
        self.order = ShuffledOrder(len(train), lambda epoch: train.shuffled_indices(seed, epoch))

    def mixture(self, model: torch.nn.Module) -> torch.nn.Module:
        # The mixture calls `self.router`: route it through the DDP/compiled wrapper so
        # gradients are synchronised (mix.router_module still reaches the Router).
        self.mix.router = model
        return self.mix

    def finish(self) -> None:
        self.mix.router = self.router

    def batch(self, indices: np.ndarray, device: torch.device) -> Any:
        rows, years = self.train.batch(indices)
        rows = self._to_device(rows, device)
        cached = None
        if self.cache is not None:
            cached = self._to_device(self.cache.read(indices), device)
        return rows[:, :-1], rows[:, 1:], years.tolist(), cached

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict]:
        x, y, years, cached = batch
        return self.mixture_loss(model, x, y, years, cached_expert_log_probs=cached)

    def save_weights(self, directory: Path) -> None:
        save_router_weights(directory, self.router)

    def load_weights(self, directory: Path) -> None:
        self.router.load_state_dict(load_router_weights(directory))


def _make_task(plan: MixturePlan, mix: TiMoE, env: DistEnv) -> LearnedAvgTask:
    cfg = plan.cfg
    assert isinstance(cfg, TrainRouterConfig)
    train = plan.train_windows()
    cache = None
    if cfg.cache_log_probs:
        amp = amp_enabled(cfg, env.device)
        key = cache_key(
            data_manifest_sha256=plan.record["data_manifest_sha256"],
            split="train",
            years=plan.years,
            seq_len=plan.seq_len,
            policy=mix.policy,
            experts=plan.expert_sha256,
            compute_dtype="bfloat16" if amp else "float32",
            token_files=token_files_fingerprint(cfg.data, "train", plan.years),
        )
        reads = plan.total_steps * plan.global_batch
        log = _console_log(env)
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


def _console_log(env: DistEnv) -> Any:
    from rich.console import Console

    console = Console(soft_wrap=True, markup=False, emoji=False)
    return (lambda text: console.print(text, highlight=False)) if env.is_main else (lambda t: None)


def _train(payload: dict[str, Any]) -> Any:
    return train_in_worker(payload, _make_task)


def _worker(payload: dict[str, Any]) -> int:
    """Entry point of a spawned worker (module level: pickled by reference)."""
    return worker_exit(_train(payload))


# ----------------------------------------------------------------------- avg


def _check_avg_out(out: Path | None, overwrite: bool) -> Path:
    """--out must be new, empty, or a bundle we may replace; never a run dir or a file."""
    if out is None:
        raise TimoeError("--out is required: the folder to write the bundle to")
    if out.exists() and not out.is_dir():
        raise TimoeError(f"--out {out} is a file: give a folder for the bundle")
    if (out / "run.json").is_file():
        raise TimoeError(f"--out {out} is a run dir: write the bundle to a folder of its own")
    ours = (out / BUNDLE_FILENAME).is_file() or (out / MIXTURE_RUN_FILENAME).is_file()
    if ours and not overwrite:
        raise TimoeError(f"--out {out} already holds a bundle: pass --overwrite to replace it")
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise TimoeError(f"--out {out} is not empty and holds no bundle: choose a new folder")
    return out


def write_avg_bundle(cfg: TrainRouterConfig) -> Path:
    """The avg bundle: the experts' run dirs and checksums, no router."""
    if not cfg.experts:
        raise TimoeError("--experts is required: a folder of expert run dirs (or run dirs)")
    out = _check_avg_out(cfg.out, cfg.overwrite)
    with output_lock(out):
        mix = TiMoE.from_expert_dirs(cfg.experts, strategy="avg", options=mixture_options(cfg))
        if cfg.overwrite:
            from timoe_core.train import state as ckpt_state

            clear_bundle_artifacts(out)
            ckpt_state.open_run_dir(out, "overwrite")  # a learned-avg run's checkpoints too
        mix.save_bundle(out)
        save_config(cfg, out)
    return out


# ---------------------------------------------------------------- the command


def train_router(cfg: TrainRouterConfig) -> Path:
    """Build the TiMoE bundle `cfg` describes (avg) or train its router (learned-avg);
    returns the bundle dir.

    Raises TimoeError for bad input (nothing written), TrainingInterrupted when stopped
    by Ctrl-C/SIGTERM after writing a checkpoint (rerun to resume).
    """
    if cfg.strategy == "avg":
        return write_avg_bundle(cfg)
    return run_mixture_training(cfg, "learned-avg", _worker, _train)
