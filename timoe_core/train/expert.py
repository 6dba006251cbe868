"""`train_expert(cfg)`: the GPT expert of one time slice, or a dense model on all slices.

`--year Y` trains the expert of the data's slice containing Y on that slice's train
windows only; `--all-years` trains one dense model on every slice (run.json kind
"dense", slice label covering the whole range). Everything about the input is checked
before anything is written (`plan_expert_run`); then the run dir is prepared once
(`prepare_run_dir`) and the workers train, all by the shared job driver
(`timoe_core.train.job`; this module's `EXPERT_JOB`).

Resume rules (the run dir is RUN_DIR = --out):
- RUN_DIR holds a run with a checkpoint: the run resumes from it, unless the new flags
  change what the run is (model shape, slice, data, seed): exit 2 naming the fields.
  Budget and optimiser flags (--max-steps, --lr, ...) may change: that extends a run.
- `--no-resume` on an existing run is refused; `--overwrite` starts over (it clears
  this toolkit's files from RUN_DIR, nothing else).
- A corrupt latest checkpoint is an error naming the file, never a silent restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from timoe_core.checkpoint import (
    RunInfo,
    load_weights_into,
    read_run_info,
    save_model_weights,
    write_run_info,
)
from timoe_core.config import (
    CONFIG_FILENAME,
    TrainExpertConfig,
    flag_name,
    format_validation_error,
    read_config_file,
    save_config,
)
from timoe_core.data.manifest import Manifest, load_manifest, manifest_checksum
from timoe_core.data.windows import TokenWindows
from timoe_core.errors import TimoeError
from timoe_core.model.gpt import GPT, GPTConfig, pad_vocab, preset_config
from timoe_core.timeslices import TimeSlice
from timoe_core.train import state as ckpt_state
from timoe_core.train.distributed import DistEnv, check_launch
from timoe_core.train.job import run_job
from timoe_core.train.loop import LoopResult, ShuffledOrder, TrainTask
from timoe_core.train.metrics import check_wandb_mode, wandb_run_id
from timoe_core.train.schedule import budget_steps

# How run.json fields that are not options are named to the user when a resume
# conflicts; every other field is an option, named by its flag (config.flag_name).
_RECORD_NAMES = {
    "kind": "--year/--all-years",
    "slice_label": "slice (--year/--all-years)",
    "data_manifest_sha256": "data (--data manifest checksum)",
    "tokenizer": "tokenizer (--data)",
    "block_size": "--seq-len",
    "vocab_size": "vocab size (--data)",
    "bias": "bias",
}


@dataclass
class ExpertPlan:
    """Everything checked and derived from the config before anything is written."""

    cfg: TrainExpertConfig
    run_dir: Path
    manifest: Manifest
    time_slice: TimeSlice
    run_info: RunInfo
    world_size: int
    total_steps: int
    # Run dir decision: "new" (nothing there), "resume" (checkpoint or re-prepare),
    # "overwrite" (clear it first).
    action: str = "new"
    notes: list[str] = field(default_factory=list)

    @property
    def model_config(self) -> GPTConfig:
        return self.run_info.model_config_

    @property
    def title(self) -> str:
        return f"{self.run_info.kind} {self.time_slice.label}"


def _model_config(cfg: TrainExpertConfig, manifest: Manifest) -> GPTConfig:
    try:
        return preset_config(
            cfg.preset,
            vocab_size=pad_vocab(manifest.vocab_size),
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
            block_size=cfg.seq_len,
            dropout=cfg.dropout,
        )
    except ValidationError as exc:
        raise TimoeError(
            format_validation_error(exc).replace("invalid config", "invalid model")
        ) from None


def _years_text(manifest: Manifest) -> str:
    years = manifest.years_with_tokens("train")
    return ", ".join(str(y) for y in years) if years else "none"


def _select_slice(cfg: TrainExpertConfig, manifest: Manifest) -> tuple[str, TimeSlice]:
    slicing = manifest.time_slicing()
    if cfg.all_years:
        return "dense", TimeSlice(slicing.start_year, slicing.end_year)
    assert cfg.year is not None
    if not slicing.contains_year(cfg.year):
        labels = ", ".join(s.label for s in slicing.slices)
        raise TimoeError(
            f"--year {cfg.year} is outside the data's slicing {slicing.start_year}-"
            f"{slicing.end_year} (slices {labels}; years with training tokens: "
            f"{_years_text(manifest)}): choose one of those years"
        )
    return "expert", slicing.slice_for_year(cfg.year)


def _conflicts(saved: RunInfo, new: RunInfo, saved_seed: int | None, seed: int) -> list[str]:
    diffs = []
    a = saved.model_dump(exclude={"model_config_", "timoe_version", "start_date", "end_date"})
    b = new.model_dump(exclude={"model_config_", "timoe_version", "start_date", "end_date"})
    a |= saved.model_config_.model_dump()
    b |= new.model_config_.model_dump()
    for key in a:
        if a[key] != b.get(key):
            diffs.append(
                f"{_RECORD_NAMES.get(key) or flag_name(TrainExpertConfig, key)} "
                f"(run has {a[key]}, flags give {b.get(key)})"
            )
    if saved_seed is not None and saved_seed != seed:
        diffs.append(f"--seed (run has {saved_seed}, flags give {seed})")
    return diffs


def _saved_seed(run_dir: Path) -> int | None:
    path = run_dir / CONFIG_FILENAME
    if not path.is_file():
        return None
    try:
        seed = read_config_file(path).get("seed")
    except TimoeError:
        return None
    return seed if isinstance(seed, int) else None


def _check_run_dir(plan: ExpertPlan, restart: bool) -> None:
    """Decide new / resume / overwrite for the run dir, or refuse (TimoeError)."""
    cfg, run_dir = plan.cfg, plan.run_dir

    def conflicts() -> list[str]:
        return _conflicts(read_run_info(run_dir), plan.run_info, _saved_seed(run_dir), cfg.seed)

    plan.action = ckpt_state.decide_run_dir(
        run_dir, resume=cfg.resume, overwrite=cfg.overwrite, restart=restart, conflicts=conflicts
    )


def plan_expert_run(
    cfg: TrainExpertConfig,
    world_size: int | None = None,
    check_run_dir: bool = True,
    restart: bool = False,
) -> ExpertPlan:
    """Check every input and derive the run; raises TimoeError, writes nothing."""
    if cfg.data is None:
        raise TimoeError("--data DATA_DIR is required: a folder made by `timoe prepare-data`")
    world_size = check_launch(cfg, world_size)
    check_wandb_mode(cfg.wandb)

    manifest = load_manifest(cfg.data)
    kind, time_slice = _select_slice(cfg, manifest)
    model_config = _model_config(cfg, manifest)
    seq_len = model_config.block_size
    windows = TokenWindows(cfg.data, "train", time_slice.years, seq_len, manifest)
    if len(windows) == 0:
        n = sum(manifest.tokens(y, "train") for y in time_slice.years)
        what = "no training tokens"
        if n > 0:
            what = (
                f"only {n} training tokens, too few for one window of {seq_len + 1} "
                "(try a shorter --seq-len)"
            )
        raise TimoeError(
            f"slice {time_slice.label} has {what} in {cfg.data} "
            f"(years with training tokens: {_years_text(manifest)})"
        )
    global_batch = cfg.batch_size * cfg.grad_accum * world_size
    if global_batch > len(windows):
        raise TimoeError(
            f"one step needs {global_batch} windows ({cfg.batch_size} --batch-size x "
            f"{cfg.grad_accum} --grad-accum x {world_size} workers) of {seq_len + 1} tokens "
            f"but slice {time_slice.label} has {len(windows)}: lower --batch-size or "
            "--grad-accum, or use a shorter --seq-len"
        )
    tokens_per_step = global_batch * seq_len
    total_steps = budget_steps(cfg, len(windows), global_batch, tokens_per_step)

    run_dir = Path(cfg.out) if cfg.out is not None else Path("runs") / f"{kind}-{time_slice.label}"
    info = RunInfo(
        kind=kind,  # type: ignore[arg-type]
        slice_label=time_slice.label,
        start_date=time_slice.start.isoformat(),
        end_date=time_slice.end.isoformat(),
        model_config_=model_config,
        tokenizer={
            "name": manifest.tokenizer,
            "vocab_size": manifest.vocab_size,
            "eot_token": manifest.eot_token,
        },
        data_manifest_sha256=manifest_checksum(cfg.data),
    )
    plan = ExpertPlan(
        cfg=cfg,
        run_dir=run_dir,
        manifest=manifest,
        time_slice=time_slice,
        run_info=info,
        world_size=world_size,
        total_steps=total_steps,
    )
    if check_run_dir:
        _check_run_dir(plan, restart=restart)
    return plan


def prepare_run_dir(plan: ExpertPlan) -> None:
    """Create or reset the run dir and record what the run is (run.json, config.yaml)."""
    run_dir = plan.run_dir
    ckpt_state.open_run_dir(run_dir, plan.action)
    write_run_info(run_dir, plan.run_info)
    save_config(ckpt_state.config_to_save(plan.cfg), run_dir)
    if plan.cfg.wandb != "disabled":
        wandb_run_id(run_dir, create=True)


class ExpertTask(TrainTask):
    """Next-token prediction on one slice's windows (TrainTask protocol, see loop.py)."""

    name = "expert"

    def __init__(
        self,
        model: GPT,
        train: TokenWindows,
        val: TokenWindows | None,
        seed: int,
        eval_windows: int,
    ) -> None:
        self.model = model
        self.train = train
        self.val = val
        self.tokens_per_window = train.seq_len
        self.order = ShuffledOrder(len(train), lambda epoch: train.shuffled_indices(seed, epoch))
        self._eval_windows = eval_windows

    @staticmethod
    def _inputs_targets(
        rows: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if device.type == "cuda":
            rows = rows.pin_memory().to(device, non_blocking=True)
        return rows[:, :-1], rows[:, 1:]

    def batch(self, indices: np.ndarray, device: torch.device) -> Any:
        return self._inputs_targets(self.train.batch(indices)[0], device)

    def eval_batch(self, indices: np.ndarray, device: torch.device) -> Any:
        assert self.val is not None
        return self._inputs_targets(self.val.batch(indices)[0], device)

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict]:
        x, y = batch
        _, loss = model(x, y)
        return loss, {}

    def eval_indices(self) -> np.ndarray | None:
        """Up to eval_windows validation windows spread evenly over the slice's years."""
        if self.val is None or len(self.val) == 0:
            return None
        n = min(len(self.val), self._eval_windows)
        return np.unique(np.linspace(0, len(self.val) - 1, n).round().astype(np.int64))

    def save_weights(self, directory: Path) -> None:
        save_model_weights(directory, self.model)

    def load_weights(self, directory: Path) -> None:
        load_weights_into(self.model, directory)


class ExpertJob:
    """train-expert as a `TrainingJob` (see job.py)."""

    ref = "timoe_core.train.expert:EXPERT_JOB"
    config_model = TrainExpertConfig

    def plan(
        self, cfg: TrainExpertConfig, world_size: int | None = None, check_run_dir: bool = True,
        restart: bool = False,
    ) -> ExpertPlan:
        return plan_expert_run(cfg, world_size, check_run_dir, restart)

    def prepare_run_dir(self, plan: ExpertPlan) -> None:
        prepare_run_dir(plan)

    def build_task(self, plan: ExpertPlan, env: DistEnv) -> ExpertTask:
        cfg = plan.cfg
        ckpt_state.seed_all(cfg.seed)
        model = GPT(plan.model_config)
        years, seq_len = plan.time_slice.years, plan.model_config.block_size
        val = TokenWindows(cfg.data, "val", years, seq_len, plan.manifest)
        return ExpertTask(
            model,
            TokenWindows(cfg.data, "train", years, seq_len, plan.manifest),
            val if len(val) else None,
            seed=cfg.seed,
            eval_windows=cfg.eval_batches * cfg.batch_size,
        )

    def wandb_config(self, plan: ExpertPlan, env: DistEnv) -> dict[str, Any]:
        return {
            "slice": plan.time_slice.label,
            "kind": plan.run_info.kind,
            "model": plan.model_config.model_dump(),
            "world_size": env.world_size,
            "total_steps": plan.total_steps,
        }

    def finish(self, plan: ExpertPlan, task: TrainTask, result: LoopResult, env: DistEnv) -> None:
        pass


EXPERT_JOB = ExpertJob()


def train_expert(cfg: TrainExpertConfig) -> Path:
    """Train the expert (or dense model) that `cfg` describes; returns its run dir.

    Raises TimoeError for bad input (nothing written), TrainingInterrupted when stopped
    by Ctrl-C/SIGTERM after writing a checkpoint (rerun to resume).
    """
    return run_job(EXPERT_JOB, cfg)
