"""`train_expert(cfg)`: the GPT expert of one time slice, or a dense model on all slices.

`--year Y` trains the expert of the data's slice containing Y on that slice's train
windows only; `--all-years` trains one dense model on every slice (run.json kind
"dense", slice label covering the whole range); `--base --until DATE` a base model on
every year that ends on or before DATE (kind "base"), to start experts from.
`--init-from SRC` starts the weights from SRC (`train.init_from`): every artefact of
the run records it (run.json `init_from`) and has a data cutoff of at least SRC's.
Everything about the input is checked before anything is written (`plan_expert_run`);
then the run dir is prepared once (`prepare_run_dir`) and the workers train, all by the
shared job driver (`timoe_core.train.job`; this module's `EXPERT_JOB`).

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
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from timoe_core.config import (
    CONFIG_FILENAME,
    TrainExpertConfig,
    TrainingConfig,
    flag_name,
    format_validation_error,
    resolve_config,
    save_config,
)
from timoe_core.data.manifest import (
    Manifest,
    data_read_up_to,
    data_read_up_to_each,
    load_manifest,
    token_files_read,
)
from timoe_core.data.windows import TokenWindows
from timoe_core.errors import TimoeError
from timoe_core.io import atomic_write_json, sha256_file
from timoe_core.model.gpt import GPT, GPTConfig, pad_vocab, preset_config
from timoe_core.model.run_info import (
    MODEL_FILENAME,
    SNAPSHOT_INFO_FILENAME,
    SNAPSHOTS_DIRNAME,
    RunInfo,
    SnapshotInfo,
    read_run_info,
    read_snapshot_info,
    write_run_info,
)
from timoe_core.model.weights import load_weights_into, save_model_weights, save_weights_state
from timoe_core.timeslices import TimeSlice, parse_query_date, period_ends, year_cutoff
from timoe_core.train import state as ckpt_state
from timoe_core.train.averaging import WeightAverage
from timoe_core.train.distributed import DistEnv
from timoe_core.train.init_from import (
    InitSource,
    check_fits,
    load_init_weights,
    resolve_init_source,
)
from timoe_core.train.job import Stages, run_job, single_stage
from timoe_core.train.launch import check_launch
from timoe_core.train.loop import Branch, DataPosition, LoopResult, ShuffledOrder, TrainTask
from timoe_core.train.metrics import check_wandb_mode, wandb_run_id
from timoe_core.train.run_dir import config_to_save, decide_run_dir, open_run_dir
from timoe_core.train.schedule import StagedSchedule, budget_steps, stage_decay_steps

# How run.json fields that are not options are named to the user when a resume
# conflicts; every other field is an option, named by its flag (config.flag_name).
_RECORD_NAMES = {
    "kind": "--year/--all-years",
    "slice_label": "slice (--year/--all-years)",
    "data_manifest_sha256": "data (--data manifest checksum)",
    "data_files_sha256": "data (the token files of --data it reads)",
    "tokenizer": "tokenizer (--data)",
    "block_size": "--seq-len",
    "vocab_size": "vocab size (--data)",
    "bias": "bias",
    "data_cutoff": "data (the last period with training windows)",
    "snapshots": "--snapshots (or the data's years)",
    "init_from": "--init-from",
}


@dataclass(frozen=True)
class Stage:
    """One chronological stage of a staged run: the period ending `end` (its cutoff),
    reading the windows dated on or before it (the first `windows` of the run's
    TokenWindows, which are in date order), `steps` main steps and a decay of
    `decay_steps`."""

    end: date
    windows: int
    steps: int
    decay_steps: int

    @property
    def cutoff(self) -> date:
        return self.end


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
    stages: list[Stage] = field(default_factory=list)  # empty: --snapshots none
    # Run dir decision: "new" (nothing there), "resume" (checkpoint or re-prepare),
    # "overwrite" (clear it first).
    action: str = "new"
    notes: list[str] = field(default_factory=list)
    init: InitSource | None = None  # --init-from

    def snapshot_cutoff(self, stage: Stage) -> date:
        """A stage snapshot's cutoff: its stage's, or --init-from's when that is later."""
        return max(stage.cutoff, self.init.cutoff) if self.init else stage.cutoff

    @property
    def snapshot_at(self) -> list[Stage]:
        """The stages that save a snapshot (`snapshot_stages`)."""
        return snapshot_stages(self.cfg, self.stages, self.time_slice, self.init)

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
    if cfg.base:
        assert cfg.until is not None
        until = parse_query_date(cfg.until)
        years = [y for y in slicing.years if year_cutoff(y) <= until]
        if not years:
            raise TimoeError(
                f"--until {cfg.until}: no year of the data's slicing {slicing.start_year}-"
                f"{slicing.end_year} ends on or before {until.isoformat()} (a base reads whole "
                f"years): give --until {slicing.start_year} or later"
            )
        return "base", TimeSlice(slicing.start_year, max(years))
    assert cfg.year is not None
    if not slicing.contains_year(cfg.year):
        labels = ", ".join(s.label for s in slicing.slices)
        raise TimoeError(
            f"--year {cfg.year} is outside the data's slicing {slicing.start_year}-"
            f"{slicing.end_year} (slices {labels}; years with training tokens: "
            f"{_years_text(manifest)}): choose one of those years"
        )
    return "expert", slicing.slice_for_year(cfg.year)


# Config fields that define what each stage of a staged run trained on: a rerun with any
# other value would go on with another schedule, batch or data order than its finished
# stages and snapshots were made with, and mix the two. A run of --snapshots none is one
# continued run: its budget and lr may change on a rerun (only its seed may not).
_STAGE_FIELDS = ("steps_per_stage", "cutoff_every", "batch_size", "grad_accum", "lr",
                 "min_lr_ratio", "warmup_fraction", "decay_fraction", "decay_shape",
                 "weight_decay", "beta1", "beta2", "grad_clip", "seed", "snapshot_kind",
                 "snapshot_average_fraction", "snapshot_dtype")


def _conflicts(saved: RunInfo, new: RunInfo, saved_cfg: TrainExpertConfig | None,
               cfg: TrainExpertConfig) -> list[str]:
    diffs = []
    a = saved.model_dump(exclude={"model_config_", "timoe_version", "start_date", "end_date"})
    b = new.model_dump(exclude={"model_config_", "timoe_version", "start_date", "end_date"})
    a |= saved.model_config_.model_dump()
    b |= new.model_config_.model_dump()
    for key in a:
        if a[key] != b.get(key):
            was, now = a[key], b.get(key)
            if key == "init_from":  # which weights, by name and checksum
                was, now = (f"{v['spec']} sha256 {v['sha256'][:12]}..., optimizer "
                            f"{v['optimizer']}" if v else "none" for v in (was, now))
            diffs.append(
                f"{_RECORD_NAMES.get(key) or flag_name(TrainExpertConfig, key)} "
                f"(run has {was}, flags give {now})"
            )
    if saved_cfg is not None:
        for key in _STAGE_FIELDS if cfg.snapshots == "stages" else ("seed",):
            was, now = getattr(saved_cfg, key), getattr(cfg, key)
            if was != now:
                diffs.append(f"{flag_name(TrainExpertConfig, key)} (run has {was}, flags give {now})")
    return diffs


def _saved_config(run_dir: Path) -> TrainExpertConfig | None:
    """RUN_DIR/config.yaml validated as the config it was written from; None when absent
    (a run killed before writing it)."""
    path = run_dir / CONFIG_FILENAME
    if not path.is_file():
        return None
    try:
        return resolve_config(TrainExpertConfig, path, {})
    except TimoeError as exc:
        raise TimoeError(
            f"{path} is corrupt ({exc}): restore it, or start over with --no-resume --overwrite"
        ) from None


def _check_run_dir(plan: ExpertPlan, restart: bool) -> None:
    """Decide new / resume / overwrite for the run dir, or refuse (TimoeError)."""
    cfg, run_dir = plan.cfg, plan.run_dir

    def conflicts() -> list[str]:
        return _conflicts(read_run_info(run_dir), plan.run_info, _saved_config(run_dir), cfg)

    plan.action = decide_run_dir(
        run_dir, resume=cfg.resume, overwrite=cfg.overwrite, restart=restart, conflicts=conflicts
    )
    if plan.action == "resume":
        verify_snapshots(plan)


def verify_snapshots(plan: ExpertPlan) -> None:
    """What a rerun keeps must be what it says: every snapshot the run is already past is
    there, records this plan's stage in its snapshot.json, and its weights hash to the
    sha256 recorded there. Refuses (TimoeError naming the file) otherwise: a missing or
    damaged snapshot cannot be rebuilt without retraining from its stage."""
    ckpt = ckpt_state.latest_checkpoint(plan.run_dir)
    at_step = ckpt.step if ckpt is not None else 0
    fix = "restore it, or start over with --no-resume --overwrite"
    ends = np.cumsum([s.steps for s in plan.stages])
    made = plan.snapshot_at
    for k, stage in enumerate(plan.stages):
        if stage not in made:
            continue
        end = int(ends[k])
        folder = plan.run_dir / snapshot_relpath(stage.cutoff)
        if not (folder / SNAPSHOT_INFO_FILENAME).is_file():
            # a decay branch runs at step `end` after its checkpoint; an average is saved
            # at step `end`, a last stage's decay snapshot at the last step, each before
            # any checkpoint of that step
            if plan.cfg.snapshot_kind == "average":
                past = at_step >= end
            elif k == len(plan.stages) - 1:
                end = plan.total_steps
                past = at_step >= end
            else:
                past = at_step > end
            if past:
                raise TimoeError(
                    f"snapshot {folder} (stage {stage.end}, listed in run.json) is missing or "
                    f"unfinished, but the run is past its step {end}: {fix}"
                )
            continue
        meta = read_snapshot_info(folder)
        expected = snapshot_info(plan.cfg, stage, meta.sha256, plan.snapshot_cutoff(stage))
        if meta != expected:
            diff = ", ".join(f"{k} {getattr(meta, k)} (this run: {getattr(expected, k)})"
                             for k in type(meta).model_fields
                             if getattr(meta, k) != getattr(expected, k))
            raise TimoeError(f"{folder / SNAPSHOT_INFO_FILENAME} records another stage ({diff}): "
                             f"{fix}")
        weights = folder / MODEL_FILENAME
        if not weights.is_file() or sha256_file(weights) != meta.sha256:
            raise TimoeError(
                f"{weights} is missing or fails its sha256 check against "
                f"{folder / SNAPSHOT_INFO_FILENAME}: the snapshot was changed or damaged; {fix}"
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
    stages: list[Stage] = []
    if cfg.snapshots == "none":
        total_steps = budget_steps(cfg, len(windows), global_batch, tokens_per_step)
        data_cutoff = year_cutoff(max(windows.years))
        data_files = token_files_read(manifest, [y for y in time_slice.years
                                                 if y <= data_cutoff.year])
    else:
        stages = plan_stages(cfg, windows, global_batch, time_slice)
        total_steps = sum(s.steps for s in stages) + stages[-1].decay_steps
        data_cutoff = stages[-1].cutoff
        data_files = data_read_up_to(cfg.data, manifest, time_slice.years, data_cutoff)

    run_dir = Path(cfg.out) if cfg.out is not None else Path("runs") / f"{kind}-{time_slice.label}"
    tokenizer: dict[str, object] = {"name": manifest.tokenizer,
                                    "vocab_size": manifest.vocab_size,
                                    "eot_token": manifest.eot_token}
    init = None
    notes = []
    if cfg.init_from:
        init = resolve_init_source(
            cfg.init_from, run_dir, time_slice=time_slice, slicing=manifest.time_slicing(),
            kind=kind, init_cutoff=cfg.init_cutoff, optimizer=cfg.init_optimizer)
        check_fits(init, model_config, tokenizer)
        data_cutoff = max(data_cutoff, init.cutoff)
        kept = snapshot_stages(cfg, stages, time_slice, init)
        raised = [s.cutoff.isoformat() for s in kept if s.cutoff < init.cutoff]
        dropped = [s.cutoff.isoformat() for s in snapshot_stages(cfg, stages, time_slice)
                   if s not in kept]
        if raised or dropped:
            notes.append(
                f"--init-from {cfg.init_from} read text up to {init.cutoff.isoformat()}: "
                + (f"snapshot {', '.join(raised)} takes that cutoff, so no answer before it "
                   "uses it" if raised else "")
                + ("; " if raised and dropped else "")
                + (f"snapshot {', '.join(dropped)} is not made (a later artefact of this run "
                   "has the same cutoff and read more)" if dropped else "")
            )
    else:
        kept = snapshot_stages(cfg, stages, time_slice)
    info = RunInfo(
        kind=kind,  # type: ignore[arg-type]
        slice_label=time_slice.label,
        start_date=time_slice.start.isoformat(),
        end_date=time_slice.end.isoformat(),
        model_config_=model_config,
        tokenizer=tokenizer,
        data_files_sha256=data_files,
        data_cutoff=data_cutoff.isoformat(),
        snapshots=[
            {"data_cutoff": (max(s.cutoff, init.cutoff) if init else s.cutoff).isoformat(),
             "path": snapshot_relpath(s.cutoff)}
            for s in kept
        ],
        init_from=init.record if init is not None else None,
    )
    plan = ExpertPlan(
        cfg=cfg,
        run_dir=run_dir,
        manifest=manifest,
        time_slice=time_slice,
        run_info=info,
        world_size=world_size,
        total_steps=total_steps,
        stages=stages,
        notes=notes,
        init=init,
    )
    if check_run_dir:
        _check_run_dir(plan, restart=restart)
    return plan


def snapshot_relpath(cutoff: date) -> str:
    return f"{SNAPSHOTS_DIRNAME}/{cutoff.isoformat()}"


def snapshot_stages(cfg: TrainExpertConfig, stages: list[Stage], time_slice: TimeSlice,
                    init: InitSource | None = None) -> list[Stage]:
    """The stages whose end gets a snapshot (earliest first): every stage but the last,
    whose end is the run's final weights (after its final decay).

    A float32 decay-branch snapshot at c is bitwise what a run that ends at c ends with (its
    final decay is the branch), so the last stage needs none. Any other snapshot is not
    (an average; weights stored as bfloat16): a run whose data ends inside its slice (the
    slice is open: a later stage may come) saves its last stage's snapshot too (a decay
    kind's is its final weights, stored as the snapshots are), and a query as of that
    cutoff uses it, not the final weights (`expert_pool.run_dir_artefacts`), as in a run
    that goes on. The final weights of a closed slice (data up to its end) answer as of
    its end.

    With --init-from, a snapshot's cutoff is raised to SRC's when that is later; one whose
    raised cutoff ties with the next artefact of the run (a later snapshot or the final
    weights) is not made: that one read more and would always be chosen over it."""
    exact = cfg.snapshot_kind == "decay" and cfg.snapshot_dtype == "float32"
    open_slice = not exact and bool(stages) and stages[-1].cutoff < time_slice.end
    made = list(stages) if open_slice else list(stages[:-1])
    if init is None or not made:
        return made
    cutoffs = [max(s.cutoff, init.cutoff) for s in made]
    if not open_slice:  # the final weights follow the last snapshot
        cutoffs.append(max(stages[-1].cutoff, init.cutoff))
    return [s for k, s in enumerate(made) if k + 1 >= len(cutoffs) or cutoffs[k] < cutoffs[k + 1]]


def snapshot_info(cfg: TrainExpertConfig, stage: Stage, sha256: str, cutoff: date
                  ) -> SnapshotInfo:
    """The snapshot.json of `stage`'s snapshot in a run of `cfg` (`cutoff`: the stage's,
    raised to --init-from's when that is later)."""
    average = cfg.snapshot_kind == "average"
    return SnapshotInfo(
        data_cutoff=cutoff.isoformat(), stage_end=stage.end.isoformat(),
        stage_steps=stage.steps, decay_steps=0 if average else stage.decay_steps, sha256=sha256,
        kind=cfg.snapshot_kind,
        average_fraction=cfg.snapshot_average_fraction if average else None,
        dtype=cfg.snapshot_dtype,
    )


def plan_stages(
    cfg: TrainExpertConfig, windows: TokenWindows, global_batch: int, time_slice: TimeSlice
) -> list[Stage]:
    """The chronological stages of a staged run: one per period (--cutoff-every) that
    brings new training windows, its cutoff the period's last day.

    Budgets are per stage, never global: stage k's steps come from --steps-per-stage or
    from the windows new in period k (one pass), so an artefact with cutoff k depends on
    data <= k and the config only."""
    if cfg.max_steps is not None or cfg.max_tokens is not None:
        flag = "--max-steps" if cfg.max_steps is not None else "--max-tokens"
        raise TimoeError(
            f"{flag} sets one budget for the whole run, but a staged run (--snapshots stages, "
            "the default) has a budget per year: give --steps-per-stage N, or --snapshots none "
            f"for one run of {flag}"
        )
    dates = windows.window_dates
    first, last = (d.astype(object) for d in (dates[0], dates[-1]))
    stages: list[Stage] = []
    for end in period_ends(first, last, cfg.cutoff_every):
        upto = windows.windows_up_to(end)
        # Windows no earlier stage trained on: a period with none adds nothing to learn,
        # and one whose windows up to its end are fewer than one step waits (no stage).
        new = upto - (stages[-1].windows if stages else 0)
        if new <= 0 or upto < global_batch:
            continue
        steps = cfg.steps_per_stage or max(1, new // global_batch)
        stages.append(Stage(end, upto, steps, stage_decay_steps(steps, cfg.decay_fraction)))
    if not stages:
        raise TimoeError(
            f"slice {time_slice.label} has {len(windows)} training windows of "
            f"{windows.seq_len + 1} tokens, fewer than one step's {global_batch}: lower "
            "--batch-size or --grad-accum, use a shorter --seq-len, or --snapshots none"
        )
    return stages


def prepare_run_dir(plan: ExpertPlan) -> None:
    """Create or reset the run dir and record what the run is (run.json, config.yaml)."""
    run_dir = plan.run_dir
    open_run_dir(run_dir, plan.action)
    write_run_info(run_dir, plan.run_info)
    save_config(config_to_save(plan.cfg), run_dir)
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


class StageStream:
    """The data order of one stage: permutations of the stage's windows (the first
    `windows` of the run), seeded by (seed, stage end, epoch), cut into steps. It knows
    nothing of later periods: a run that stops at this stage reads the same windows."""

    def __init__(self, stage: Stage, seed: int) -> None:
        self.stage, self.seed = stage, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def block(self, j: int, n: int) -> np.ndarray:
        per_epoch = self.stage.windows // n
        epoch, b = divmod(j, per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, self.stage.end.toordinal(), epoch])
            self._perm = (epoch, rng.permutation(self.stage.windows))
        return self._perm[1][b * n : (b + 1) * n]


class StagedOrder:
    """Main step s reads from the stream of the stage holding s; the last stage's stream
    goes on through the final decay (DataOrder protocol, see loop.py)."""

    def __init__(self, stages: list[Stage], seed: int) -> None:
        self.stages = stages
        self.streams = [StageStream(s, seed) for s in stages]
        self.starts = np.cumsum([0] + [s.steps for s in stages])

    def take(self, position: DataPosition, n: int) -> tuple[np.ndarray, DataPosition]:
        step = position.offset // n
        k = min(int(np.searchsorted(self.starts, step, side="right")) - 1, len(self.stages) - 1)
        out = self.streams[k].block(step - int(self.starts[k]), n)
        return out, DataPosition(0, position.offset + n)


class StagedExpertTask(ExpertTask):
    """An expert trained in chronological stages, a snapshot at the end of each but the
    last: the running average of the main line's weights (`--snapshot-kind average`,
    train/averaging.py) or a decay branch (`decay`, loop.Branch); see
    docs/architecture.md."""

    def __init__(self, model: GPT, train: TokenWindows, val: TokenWindows | None, seed: int,
                 eval_windows: int, stages: list[Stage], run_dir: Path, info: RunInfo,
                 data_files: dict[date, dict[str, str]], cfg: TrainExpertConfig,
                 snapshot_at: list[Stage]) -> None:
        super().__init__(model, train, val, seed, eval_windows)
        self.stages, self.run_dir, self.info, self.cfg = stages, run_dir, info, cfg
        self.data_files = data_files  # stage end -> what its snapshot read (run.json)
        self.snapshot_at = snapshot_at  # the stages that save a snapshot (snapshot_stages)
        self.order = StagedOrder(stages, seed)
        self.schedule: StagedSchedule | None = None
        ends = np.cumsum([s.steps for s in stages])
        # main step count at a stage end -> the stage whose snapshot is saved there
        self.snapshot_ends = {int(ends[stages.index(s)]): s for s in snapshot_at}
        self.main_steps = int(ends[-1])
        self.total_steps = self.main_steps + stages[-1].decay_steps
        self.average = (WeightAverage(model, cfg.snapshot_average_fraction)
                        if cfg.snapshot_kind == "average" else None)

    def own_schedule(self, cfg: TrainingConfig, total_steps: int) -> StagedSchedule:
        first = self.stages[0].steps
        self.schedule = StagedSchedule(
            peak_lr=cfg.lr,
            warmup_steps=int(cfg.warmup_fraction * first + 0.5),
            main_steps=sum(s.steps for s in self.stages),
            decay_steps=self.stages[-1].decay_steps,
            min_lr_ratio=cfg.min_lr_ratio,
            decay_shape=cfg.decay_shape,
        )
        return self.schedule

    def after_step(self, step: int, is_main: bool) -> None:
        if self.average is not None:
            if step > self.main_steps:  # the final decay: not averaged
                return
            self.average.update(step)
            stage = self.snapshot_ends.get(step)
            weights = self.average.averaged_state
        else:  # a decay snapshot of the last stage (see snapshot_stages): the final weights
            stage = self.snapshot_ends.get(self.main_steps) if step == self.total_steps else None
            weights = type(self.model).state_dict
        if stage is not None and is_main:
            folder = self.run_dir / snapshot_relpath(stage.cutoff)
            if not (folder / SNAPSHOT_INFO_FILENAME).is_file():
                self.save_snapshot(folder, stage, weights(self.model))

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.average is None else {"average": self.average.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.average is not None and "average" in state:
            self.average.load_state_dict(state["average"])

    def branch_after(self, step: int) -> Branch | None:
        if self.average is not None:  # averaged snapshots need no branch
            return None
        order = self.order
        assert isinstance(order, StagedOrder)
        for k, stage in enumerate(self.stages[:-1]):
            if int(order.starts[k + 1]) == step:
                if stage not in self.snapshot_at:
                    return None  # no branch: the main run goes on as it would after one
                stream, schedule = order.streams[k], self.schedule
                assert schedule is not None
                folder = self.run_dir / snapshot_relpath(stage.cutoff)
                return Branch(  # the branch reads its stage's stream on from the stage end
                    steps=stage.decay_steps,
                    take=lambda i, n, s=stream, at=stage.steps: s.block(at + i, n),
                    lr=lambda i, f=schedule.branch_lr, d=stage.decay_steps: f(i, d),
                    save=lambda f=folder, st=stage: self.save_snapshot(
                        f, st, self.model.state_dict()),
                    done=(folder / SNAPSHOT_INFO_FILENAME).is_file(),
                )
        return None

    def save_snapshot(self, folder: Path, stage: Stage, weights: dict[str, torch.Tensor]
                      ) -> None:
        """The snapshot's weights (as --snapshot-dtype) and run.json (the run's, with the
        snapshot's cutoff, raised to --init-from's if that is later), then snapshot.json
        (last: a folder holding it is whole)."""
        path = save_weights_state(folder, weights, self.cfg.snapshot_dtype)
        info = self.info.at_cutoff(stage.cutoff, self.data_files[stage.end])
        write_run_info(folder, info)
        meta = snapshot_info(self.cfg, stage, sha256_file(path), info.cutoff)
        atomic_write_json(folder / SNAPSHOT_INFO_FILENAME, meta.model_dump(exclude_none=True))


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
        if plan.init is not None:  # a resumed run's checkpoint replaces these weights
            load_init_weights(model, plan.init)
        years, seq_len = plan.time_slice.years, plan.model_config.block_size
        val = TokenWindows(cfg.data, "val", years, seq_len, plan.manifest)
        train = TokenWindows(cfg.data, "train", years, seq_len, plan.manifest)
        eval_windows = cfg.eval_batches * cfg.batch_size
        task: ExpertTask
        if plan.stages:
            snapshot_at = plan.snapshot_at
            data_files = data_read_up_to_each(cfg.data, plan.manifest, years,
                                              [s.end for s in snapshot_at])
            task = StagedExpertTask(model, train, val if len(val) else None, cfg.seed,
                                    eval_windows, plan.stages, plan.run_dir, plan.run_info,
                                    data_files, cfg, snapshot_at)
        else:
            task = ExpertTask(model, train, val if len(val) else None, seed=cfg.seed,
                              eval_windows=eval_windows)
        if plan.init is not None and plan.init.record.optimizer:
            task.start_optimizer_state = plan.init.optimizer_state()
        return task

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

    def stages(self, plan: ExpertPlan, env: DistEnv) -> Stages:
        return single_stage(self, plan, env)


EXPERT_JOB = ExpertJob()


def train_expert(cfg: TrainExpertConfig) -> Path:
    """Train the expert (or dense model) that `cfg` describes; returns its run dir.

    Raises TimoeError for bad input (nothing written), TrainingInterrupted when stopped
    by Ctrl-C/SIGTERM after writing a checkpoint (rerun to resume).
    """
    return run_job(EXPERT_JOB, cfg)
