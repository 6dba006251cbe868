"""Planning a train-expert run: every input checked and the run derived (slice, model,
budget or stages, run.json) before anything is written (`plan_expert_run`), the run-dir
decision and the snapshots a resumed run keeps, then the run dir prepared
(`prepare_run_dir`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from timoe_core.config import TrainExpertConfig, format_validation_error, save_config
from timoe_core.data.manifest import Manifest, data_read_up_to, load_manifest, token_files_read
from timoe_core.data.windows import TokenWindows
from timoe_core.errors import TimoeError
from timoe_core.io import sha256_file
from timoe_core.model.gpt import GPTConfig, pad_vocab, preset_config
from timoe_core.model.run_info import (
    MODEL_FILENAME,
    SNAPSHOT_INFO_FILENAME,
    RunInfo,
    RunKind,
    read_run_info,
    read_snapshot_info,
    write_run_info,
)
from timoe_core.timeslices import TimeSlice, parse_query_date, year_cutoff
from timoe_core.train import state as ckpt_state
from timoe_core.train.expert_resume import run_conflicts, saved_config
from timoe_core.train.expert_stages import (
    Stage,
    plan_stages,
    snapshot_info,
    snapshot_relpath,
    snapshot_stages,
)
from timoe_core.train.init_from import InitSource, check_fits, resolve_init_source
from timoe_core.train.launch import check_launch
from timoe_core.train.metrics import check_wandb_mode, wandb_run_id
from timoe_core.train.run_dir import RunDirAction, config_to_save, decide_run_dir, open_run_dir
from timoe_core.train.schedule import budget_steps


@dataclass
class ExpertPlan:
    """Everything checked and derived from the config before anything is written."""

    cfg: TrainExpertConfig
    run_dir: Path
    data_dir: Path  # --data, checked
    manifest: Manifest
    time_slice: TimeSlice
    run_info: RunInfo
    world_size: int
    total_steps: int
    stages: list[Stage] = field(default_factory=list)  # empty: --snapshots none
    # Run dir decision: "new" (nothing there), "resume" (checkpoint or re-prepare),
    # "overwrite" (clear it first).
    action: RunDirAction = "new"
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


def _select_slice(cfg: TrainExpertConfig, manifest: Manifest) -> tuple[RunKind, TimeSlice]:
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


def _check_run_dir(plan: ExpertPlan, restart: bool) -> None:
    """Decide new / resume / overwrite for the run dir, or refuse (TimoeError)."""
    cfg, run_dir = plan.cfg, plan.run_dir

    def conflicts() -> list[str]:
        return run_conflicts(read_run_info(run_dir), plan.run_info, saved_config(run_dir), cfg)

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
        kind=kind,
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
        data_dir=cfg.data,
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


def prepare_run_dir(plan: ExpertPlan) -> None:
    """Create or reset the run dir and record what the run is (run.json, config.yaml)."""
    run_dir = plan.run_dir
    open_run_dir(run_dir, plan.action)
    write_run_info(run_dir, plan.run_info)
    save_config(config_to_save(plan.cfg), run_dir)
    if plan.cfg.wandb != "disabled":
        wandb_run_id(run_dir, create=True)

