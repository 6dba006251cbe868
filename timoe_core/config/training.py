"""The configs of training: what every training command shares (`TrainingConfig`) and
`train-expert`'s own options."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from timoe_core.config.fields import (
    DEVICE_HELP,
    MAX_SEED,
    MODEL,
    RUN,
    TRAIN,
    WORKERS,
    DeviceName,
    StrictModel,
    cli,
    refuse_ignored,
)
from timoe_core.timeslices import CutoffEvery


class TrainingConfig(StrictModel):
    """What every training command shares: optimisation, workers, checkpoints, logging."""

    data: Path | None = Field(
        None, description="Prepared data dir (from `timoe prepare-data`).", json_schema_extra=cli(RUN)
    )
    out: Path | None = Field(
        None, description="Run dir to write (and to resume from).", json_schema_extra=cli(RUN)
    )
    max_steps: int | None = Field(
        None, ge=1, json_schema_extra=cli(TRAIN),
        description="Optimizer steps of the whole run (or give --max-tokens; default: one epoch).",
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Training tokens of the whole run; sets --max-steps.",
        json_schema_extra=cli(TRAIN),
    )
    steps_per_stage: int | None = Field(
        None, ge=1, json_schema_extra=cli(TRAIN),
        description="Optimizer steps of each chronological stage (one period of data, see "
        "--cutoff-every; default: one pass over that period's windows). The budget of a "
        "staged run.",
    )
    # Default month: the finest period whose compute (1.03-1.08x an unstaged run, with the
    # averaged snapshot) and storage meet their targets (docs/benchmarks.md, snapshots).
    cutoff_every: CutoffEvery = Field(
        "month", json_schema_extra=cli(TRAIN),
        description="month | quarter | year: a staged run's period. Each period end with "
        "data is a cutoff: a stage, a snapshot (expert) or a router stage, usable as of it.",
    )
    batch_size: int = Field(
        8, ge=1, description="Windows per micro-batch per worker.", json_schema_extra=cli(TRAIN)
    )
    grad_accum: int = Field(
        1, ge=1, description="Micro-batches per optimizer step.", json_schema_extra=cli(TRAIN)
    )
    lr: float = Field(1e-3, gt=0.0, description="Peak learning rate.", json_schema_extra=cli(TRAIN))
    min_lr_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="Floor of the decay as a fraction of the peak.",
        json_schema_extra=cli(TRAIN),
    )
    warmup_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="Warmup share of the steps.", json_schema_extra=cli(TRAIN)
    )
    decay_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="Decay share of the steps.", json_schema_extra=cli(TRAIN)
    )
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = Field(
        "linear", description="linear | cosine | 1-sqrt.", json_schema_extra=cli(TRAIN)
    )
    weight_decay: float = Field(
        0.1, ge=0.0, description="AdamW weight decay on matrices.", json_schema_extra=cli(TRAIN)
    )
    beta1: float = Field(
        0.9, gt=0.0, lt=1.0, description="AdamW beta1.", json_schema_extra=cli(TRAIN)
    )
    beta2: float = Field(
        0.95, gt=0.0, lt=1.0, description="AdamW beta2.", json_schema_extra=cli(TRAIN)
    )
    grad_clip: float = Field(
        1.0, ge=0.0, description="Clip the gradient norm to this (0: off).",
        json_schema_extra=cli(TRAIN),
    )
    amp: bool | None = Field(  # None: bf16 on CUDA, off on CPU
        None, description="bf16 autocast (default on for CUDA, off for CPU).",
        json_schema_extra=cli(TRAIN, "--amp/--no-amp"),
    )
    device: DeviceName = Field(
        "auto", description=DEVICE_HELP, json_schema_extra=cli(TRAIN)
    )
    # The GPU settings below resolve per device when training starts; the choices made
    # are the run's first metrics.jsonl record ({"type": "runtime", ...}).
    compile: bool | None = Field(
        None, description="torch.compile the model (default on for CUDA, off for CPU).",
        json_schema_extra=cli(TRAIN, "--compile/--no-compile"),
    )
    tf32: bool = Field(
        True, description="TF32 matmuls on CUDA (no effect on CPU).",
        json_schema_extra=cli(TRAIN, "--tf32/--no-tf32"),
    )
    fused_adamw: bool | None = Field(
        None, description="The fused AdamW kernel (default on for CUDA, off for CPU).",
        json_schema_extra=cli(TRAIN, "--fused-adamw/--no-fused-adamw"),
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of init and data order.",
                      json_schema_extra=cli(TRAIN))
    eval_every: int = Field(
        0, ge=0, description="Evaluate every N steps (0: at the end only).",
        json_schema_extra=cli(RUN),
    )
    eval_batches: int = Field(
        8, ge=1, description="Validation batches per evaluation.", json_schema_extra=cli(RUN)
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Checkpoint every N steps (0: at the end only).",
        json_schema_extra=cli(RUN),
    )
    keep_checkpoints: int = Field(  # complete checkpoints kept in RUN_DIR/checkpoints
        2, ge=1, description="Complete checkpoints to keep.", json_schema_extra=cli(RUN)
    )
    stop_at_step: int | None = Field(
        None, ge=1, json_schema_extra=cli(TRAIN),
        description="Stop at this step with a checkpoint (the schedule still spans "
        "--max-steps); rerun without it to go on.",
    )
    # Debug: each rank logs the window indices it read to RUN_DIR/debug/windows-rankR.jsonl.
    log_windows: bool = Field(
        False, description="Debug: log the windows each rank reads.",
        json_schema_extra=cli(hidden=True),
    )
    log_every: int = Field(10, ge=1, description="Log every N steps.", json_schema_extra=cli(RUN))
    nproc_per_node: int = Field(
        1, ge=1, description="Worker processes on this machine.", json_schema_extra=cli(WORKERS)
    )
    nnodes: int = Field(1, ge=1, description="Machines in the run.", json_schema_extra=cli(WORKERS))
    node_rank: int = Field(
        0, ge=0, description="This machine's rank (0..nnodes-1).", json_schema_extra=cli(WORKERS)
    )
    rdzv_endpoint: str | None = Field(
        None, description="HOST:PORT of node rank 0 (several nodes).",
        json_schema_extra=cli(WORKERS),
    )
    max_restarts: int = Field(
        0, ge=0, description="Restarts of failed workers (they resume).",
        json_schema_extra=cli(WORKERS),
    )
    wandb: Literal["disabled", "offline", "online"] = Field(
        "disabled", description="disabled | offline | online.", json_schema_extra=cli(RUN)
    )
    wandb_project: str = Field("timoe", description="wandb project.", json_schema_extra=cli(RUN))
    resume: bool = Field(
        True, description="Resume from the run dir's last checkpoint.",
        json_schema_extra=cli(RUN, "--resume/--no-resume"),
    )
    overwrite: bool = Field(
        False, description="Start over, clearing an existing run in --out.",
        json_schema_extra=cli(RUN),
    )

    @model_validator(mode="after")
    def _check_budget(self) -> TrainingConfig:
        if self.warmup_fraction + self.decay_fraction > 1.0:
            raise ValueError("warmup_fraction + decay_fraction must be at most 1")
        if self.max_steps is not None and self.max_tokens is not None:
            raise ValueError("give --max-steps or --max-tokens, not both")
        return self


class TrainExpertConfig(TrainingConfig):
    year: int | None = Field(None, description="Train the expert of the slice containing this year.")
    all_years: bool = Field(False, description="Train one dense model on every slice.")
    preset: Literal["tiny", "small", "gpt2-124m"] = Field(
        "tiny", description="tiny | small | gpt2-124m.", json_schema_extra=cli(MODEL)
    )
    n_layer: int | None = Field(
        None, ge=1, description="Override the preset's layers.", json_schema_extra=cli(MODEL)
    )
    n_head: int | None = Field(
        None, ge=1, description="Override the preset's heads.", json_schema_extra=cli(MODEL)
    )
    n_embd: int | None = Field(
        None, ge=1, description="Override the preset's width.", json_schema_extra=cli(MODEL)
    )
    seq_len: int | None = Field(
        None, ge=2, description="Override the preset's context length.",
        json_schema_extra=cli(MODEL),
    )
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="Override the preset's dropout.",
        json_schema_extra=cli(MODEL),
    )
    base: bool = Field(
        False, json_schema_extra=cli(TRAIN),
        description="Train a base model on every year up to --until (run.json kind base), "
        "to start experts from (--init-from).",
    )
    until: str | None = Field(
        None, json_schema_extra=cli(TRAIN),
        description="--base: the last date of its text (YYYY, YYYY-MM or YYYY-MM-DD); it "
        "reads the years that end on or before it.",
    )
    init_from: str | None = Field(
        None, json_schema_extra=cli(TRAIN),
        description="Start from these weights: a run dir, a snapshot folder, BUNDLE:expert:"
        "YEAR, a GPTBase or GPT-2 folder, hf:ORG/NAME, or previous (the preceding slice's "
        "expert in --out's folder). The run's data cutoff is then at least theirs.",
    )
    init_optimizer: bool = Field(
        False, json_schema_extra=cli(TRAIN),
        description="With --init-from a run dir: also take its optimizer state.",
    )
    init_cutoff: str | None = Field(
        None, json_schema_extra=cli(TRAIN),
        description="The date of the latest text --init-from's weights read; needed for a "
        "GPTBase, GPT-2 or hf: folder, which records none.",
    )
    snapshots: Literal["stages", "none"] = Field(
        "stages", json_schema_extra=cli(TRAIN),
        description="stages: train in chronological stages, one per period (--cutoff-every), "
        "and save a snapshot after each (--snapshot-kind), so the expert is usable as of "
        "every period end | none: one shuffled run over the slice, usable once the slice "
        "has ended.",
    )

    # Default average: at month ends as good as a decay branch (0.96-1.00x its held-out
    # perplexity) at no extra step, where monthly decay branches cost 1.3x an unstaged
    # run (docs/benchmarks.md, the snapshots group). At year ends decay is 4.5% better.
    snapshot_kind: Literal["average", "decay"] = Field(
        "average", json_schema_extra=cli(TRAIN),
        description="How a staged run makes the snapshot at each stage end. average: a "
        "running average of the weights along the main line (no extra training step; as "
        "good as decay with monthly stages) | decay: a decay branch of --decay-fraction of "
        "the stage's steps off the main line (better with --cutoff-every year).",
    )
    # Default 0.03: a lower held-out perplexity than 0.1 at month ends and at year ends
    # (docs/benchmarks.md, the snapshots group).
    snapshot_average_fraction: float = Field(
        0.03, gt=0.0, le=1.0, json_schema_extra=cli(TRAIN),
        description="--snapshot-kind average: the average's horizon as a share of the steps "
        "so far (it weighs about the last such share of the main line).",
    )
    # Default bfloat16: half the bytes of a snapshot at every month end, and the same
    # held-out perplexity (docs/benchmarks.md, the snapshots group).
    snapshot_dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16", json_schema_extra=cli(TRAIN),
        description="Storage dtype of the snapshots' weights (bfloat16: half the bytes; "
        "loaded as float32). The run's final weights stay float32.",
    )

    @model_validator(mode="after")
    def _check_target(self) -> TrainExpertConfig:
        if sum((self.year is not None, self.all_years, self.base)) != 1:
            raise ValueError("give exactly one of --year YEAR, --all-years or --base --until DATE")
        if self.base != (self.until is not None):
            raise ValueError("--base and --until DATE go together: --base --until DATE trains a "
                             "base model on the years up to DATE")
        if not self.init_from and (self.init_optimizer or self.init_cutoff is not None):
            raise ValueError("--init-optimizer and --init-cutoff need --init-from SRC")
        refuse_ignored(self, self._effect_rules())
        return self

    def _effect_rules(self) -> dict[str, tuple[bool, str]]:
        """The options that take effect in some runs only: name -> (whether they do in
        this one, when they would)."""
        stages = self.snapshots == "stages"
        staged = ("to a staged run (--snapshots stages); with --snapshots none give "
                  "--max-steps or --max-tokens")
        no_snapshot = "to a staged run (--snapshots stages): --snapshots none saves no snapshot"
        return {"steps_per_stage": (stages, staged), "cutoff_every": (stages, staged),
                "snapshot_kind": (stages, no_snapshot), "snapshot_dtype": (stages, no_snapshot),
                "snapshot_average_fraction": (stages and self.snapshot_kind == "average",
                                              "to --snapshot-kind average")}

    def options_without_effect(self) -> set[str]:
        """The options this run ignores (a rerun is not held to what it recorded of them)."""
        return {name for name, (effective, _) in self._effect_rules().items() if not effective}
