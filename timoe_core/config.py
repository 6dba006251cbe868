"""Configs for every command: pydantic models, loaded from YAML/TOML, overridden by flags.

One rule for all commands: `resolve_config(Model, config_file, flags)` reads the file
(if any), lays every flag that was given (not None) over it, and validates. The
resolved config is saved next to the command's output with `save_config`, so a run
can be repeated with `--config that-file`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tomllib
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from timoe_core.errors import TimoeError
from timoe_core.io import atomic_write_text
from timoe_core.timeslices import AnswerCutoffs, CutoffEvery

CONFIG_FILENAME = "config.yaml"


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a config file must not be silently ignored."""

    # allow_inf_nan=False: `--lr inf` or `weight_decay: .nan` is refused here, at the
    # boundary, before anything is written (json would save it as null).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Seeds feed torch, numpy and per-step/per-rank derivations (seed + step): keep them in
# a range every one of those accepts.
MAX_SEED = 2**31 - 1


def _device_name(value: str) -> str:
    """auto, cpu, cuda, or cuda:N (torch's and lm-eval's spelling of one GPU)."""
    if re.fullmatch(r"auto|cpu|cuda(:\d{1,4})?", value):
        return value
    raise ValueError(f"must be auto, cpu, cuda or cuda:N (one GPU), got {value!r}")


DeviceName = Annotated[str, AfterValidator(_device_name)]
DEVICE_HELP = "auto | cpu | cuda | cuda:N."
# A config file is a few lines; anything this large is a mistake or an attack.
MAX_CONFIG_BYTES = 1 << 20


# ------------------------------------------------------------------- options

# Help panels of `--help` (json_schema_extra "panel").
TRAIN, WORKERS, RUN, MIXTURE, MODEL = (
    "Training", "Workers", "Run dir, checkpoints and logging", "Mixture", "Model",
)
SOURCE, OUTPUT, SCALE = "Source", "Output", "Scale"


def cli(
    panel: str | None = None, flag: str | None = None, hidden: bool = False, repeat: bool = False
) -> dict[str, Any]:
    """How a field appears on the command line, beside its Field(description=...): the
    --help panel, the flag when it is not --field-name (e.g. "--amp/--no-amp"), and
    `repeat` for a field given as a repeatable string option (a NAME=VALUE mapping)."""
    extra: dict[str, Any] = {}
    if repeat:
        extra["repeat"] = True
    if panel:
        extra["panel"] = panel
    if flag:
        extra["flag"] = flag
    if hidden:
        extra["hidden"] = True
    return extra


def parse_assignments(items: Any) -> dict[str, str]:
    """['a=b', 'c=d'] (flags) or {'a': 'b'} (a config file) -> {'a': 'b', 'c': 'd'}.

    Raises ValueError (pydantic names the field) for an item without NAME=VALUE."""
    if not items:
        return {}
    if isinstance(items, dict):
        return {str(k): str(v) for k, v in items.items()}
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{item!r}: expected NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


def flag_name(model: type[BaseModel], name: str) -> str:
    """The command-line flag of field `name` (`--field-name` unless `cli(flag=...)`)."""
    field = model.model_fields.get(name)
    extra = field.json_schema_extra if field is not None else None
    if isinstance(extra, dict) and extra.get("flag"):
        return str(extra["flag"]).split("/")[0]
    return "--" + name.replace("_", "-")


def refuse_ignored(model: BaseModel, rules: dict[str, tuple[bool, str]]) -> None:
    """ValueError naming the first option set (to other than its default) that would have
    no effect: rules[field] = (it takes effect, when it would). Every option either takes
    effect or is refused; none is ignored silently."""
    for name, (effective, when) in rules.items():
        default = type(model).model_fields[name].get_default(call_default_factory=True)
        if not effective and getattr(model, name) != default:
            raise ValueError(
                f"{flag_name(type(model), name)} has no effect here: it applies {when}; "
                "leave it out"
            )


# --------------------------------------------------------------------------- data


class PrepareDataConfig(StrictModel):
    source: str = Field(
        "builtin", json_schema_extra=cli(SOURCE),
        description="builtin | fineweb-edu[:CONFIG] | hf:NAME[:CONFIG] | a "
        ".jsonl/.json/.csv/.parquet file or a folder of them.",
    )
    out: Path | None = Field(
        None, description="Data dir to write (manifest.json, train/YEAR.bin, val/YEAR.bin).",
        json_schema_extra=cli(OUTPUT),
    )
    text_field: str = Field("text", description="Field holding the text.",
                            json_schema_extra=cli(SOURCE))
    date_field: str = Field(
        "date", json_schema_extra=cli(SOURCE),
        description="Field holding the date: a year, an ISO date or timestamp, a unix timestamp "
        "or a CC-MAIN dump name (fineweb-edu: its dump field unless given).",
    )
    seq_len: int = Field(1024, ge=8, description="Training window length recorded for readers.",
                         json_schema_extra=cli(OUTPUT))
    val_fraction: float = Field(
        0.005, gt=0.0, le=0.5, json_schema_extra=cli(OUTPUT),
        description="Share of documents held out (chosen by a hash of the text), in (0, 0.5].",
    )
    start_year: int = Field(2013, ge=1900, le=2200, description="First year kept.",
                            json_schema_extra=cli(OUTPUT))
    end_year: int = Field(2024, ge=1900, le=2200, description="Last year kept.",
                          json_schema_extra=cli(OUTPUT))
    slice_years: int = Field(2, ge=1, description="Years per time slice (expert).",
                             json_schema_extra=cli(OUTPUT))
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1,
        description="Tokeniser threads (default: all cores).", json_schema_extra=cli(SCALE),
    )
    overwrite: bool = Field(
        False, description="Replace an existing data dir (only once the new one is complete).",
        json_schema_extra=cli(OUTPUT),
    )
    skip_bad_rows: bool = Field(
        False, json_schema_extra=cli(SOURCE),
        description="Count and skip malformed rows and unreadable dates instead of stopping.",
    )
    num_shards: int = Field(
        1, ge=1, json_schema_extra=cli(SCALE),
        description="Split the corpus across N machines by a hash of each document's text "
        "(never by its position); --merge joins the shards into what one run writes.",
    )
    shard_index: int = Field(0, ge=0, description="Which shard this machine prepares, 0..N-1.",
                             json_schema_extra=cli(SCALE))
    max_docs: int | None = Field(
        None, ge=1, json_schema_extra=cli(SOURCE),
        description="Keep at most N documents per year: each year's first N in (date, text "
        "hash) order, whatever the record order or later records (the whole source is read).",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the built-in corpus.",
                      json_schema_extra=cli(SOURCE))
    # Size of the built-in corpus: documents generated per year.
    builtin_docs_per_year: int = Field(
        400, ge=1, description="Size of the built-in corpus: documents per year.",
        json_schema_extra=cli(SOURCE),
    )
    # Split of an hf:NAME / fineweb-edu source.
    hf_split: str = Field("train", description="Split of an hf: or fineweb-edu source.",
                          json_schema_extra=cli(SOURCE))
    until: str | None = Field(
        None, json_schema_extra=cli(SOURCE),
        description="Leave out documents dated after DATE (YYYY, YYYY-MM or YYYY-MM-DD; a "
        "document dated by year counts as its last day); the slicing stays as it is.",
    )
    merge: list[Path] | None = None  # the data dirs to merge (prepare-data --merge DIR...)

    @model_validator(mode="after")
    def _check(self) -> "PrepareDataConfig":
        if self.start_year > self.end_year:
            raise ValueError(
                f"start_year {self.start_year} is after end_year {self.end_year}: swap them"
            )
        if self.shard_index >= self.num_shards:
            raise ValueError(
                f"shard_index {self.shard_index} must be below num_shards {self.num_shards}"
            )
        builtin = self.source == "builtin"
        hub = self.source.startswith(("hf:", "fineweb-edu"))
        merging = bool(self.merge)
        reads = "when a source is read, not with --merge (the inputs were read already)"
        refuse_ignored(self, {
            "builtin_docs_per_year": (builtin and not merging, "to --source builtin"),
            "seed": (builtin and not merging, "to --source builtin (its generator)"),
            "hf_split": (hub and not merging, "to --source hf:NAME or fineweb-edu"),
            **{name: (not merging, reads) for name in (
                "source", "text_field", "date_field", "seq_len", "val_fraction", "start_year",
                "end_year", "slice_years", "skip_bad_rows", "num_shards", "shard_index",
                "max_docs", "until")},
        })
        return self


# ----------------------------------------------------------------------- training

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
    # Default year: monthly cutoffs miss the compute (<= 1.10x) and storage targets
    # (docs/benchmarks.md, the cutoffs and snapshots groups), so month is opt-in for now.
    cutoff_every: CutoffEvery = Field(
        "year", json_schema_extra=cli(TRAIN),
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
    def _check_budget(self) -> "TrainingConfig":
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
        "and save a snapshot after each (a decay branch), so the expert is usable as of "
        "every period end | none: one shuffled run over the slice, usable once the slice "
        "has ended.",
    )

    snapshot_kind: Literal["average", "decay"] = Field(  # default: docs/benchmarks.md
        "decay", json_schema_extra=cli(TRAIN),
        description="How a staged run makes the snapshot at each stage end. average: a "
        "running average of the weights along the main line (no extra training step) | "
        "decay: a decay branch of --decay-fraction of the stage's steps off the main line.",
    )
    snapshot_average_fraction: float = Field(
        0.1, gt=0.0, le=1.0, json_schema_extra=cli(TRAIN),
        description="--snapshot-kind average: the average's horizon as a share of the steps "
        "so far (it weighs about the last such share of the main line).",
    )
    snapshot_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", json_schema_extra=cli(TRAIN),
        description="Storage dtype of the snapshots' weights (bfloat16: half the bytes; "
        "loaded as float32). The run's final weights stay float32.",
    )

    @model_validator(mode="after")
    def _check_target(self) -> "TrainExpertConfig":
        if sum((self.year is not None, self.all_years, self.base)) != 1:
            raise ValueError("give exactly one of --year YEAR, --all-years or --base --until DATE")
        if self.base != (self.until is not None):
            raise ValueError("--base and --until DATE go together: --base --until DATE trains a "
                             "base model on the years up to DATE")
        if not self.init_from and (self.init_optimizer or self.init_cutoff is not None):
            raise ValueError("--init-optimizer and --init-cutoff need --init-from SRC")
        staged = ("to a staged run (--snapshots stages); with --snapshots none give "
                  "--max-steps or --max-tokens")
        refuse_ignored(self, {"steps_per_stage": (self.snapshots == "stages", staged),
                              "cutoff_every": (self.snapshots == "stages", staged)})
        no_snapshot = "to a staged run (--snapshots stages): --snapshots none saves no snapshot"
        refuse_ignored(self, {"snapshot_kind": (self.snapshots == "stages", no_snapshot),
                              "snapshot_dtype": (self.snapshots == "stages", no_snapshot),
                              "snapshot_average_fraction": (
                                  self.snapshots == "stages" and self.snapshot_kind == "average",
                                  "to --snapshot-kind average")})
        return self


class MixtureOptions(StrictModel):
    """How experts are combined; saved in the bundle."""

    policy: Literal["point-in-time", "strict", "inclusive"] = Field(
        "point-in-time", json_schema_extra=cli(MIXTURE),
        description="Eligibility: point-in-time (strict: the same) uses only artefacts whose "
        "data cutoff is on or before the query date; inclusive (the paper code's rule) a "
        "slice's final expert once the slice has started, which leaks up to one slice.",
    )
    top_k: int | None = Field(
        None, ge=1, description="Router: keep the k largest weights per token.",
        json_schema_extra=cli(MIXTURE),
    )
    entropy_coef: float = Field(
        0.01, ge=0.0, description="Router entropy loss weight.", json_schema_extra=cli(MIXTURE)
    )
    balance_coef: float = Field(
        0.01, ge=0.0, description="Router load-balancing loss weight.",
        json_schema_extra=cli(MIXTURE),
    )
    z_loss_coef: float = Field(
        1e-4, ge=0.0, description="Router z-loss weight.", json_schema_extra=cli(MIXTURE)
    )
    # Router shape (learned-avg / coadapt): own token embedding, prefix-mean pooled, MLP.
    router_embed_dim: int = Field(
        64, ge=1, le=1 << 16, description="Router token embedding width.",
        json_schema_extra=cli(MIXTURE),
    )
    router_hidden_dim: int = Field(
        128, ge=1, le=1 << 16, description="Router hidden width.",
        json_schema_extra=cli(MIXTURE),
    )
    router_date_features: bool = Field(
        True, description="Feed the query date's eligibility mask to the router.",
        json_schema_extra=cli(MIXTURE, "--router-date-features/--no-router-date-features"),
    )


class TrainRouterConfig(TrainingConfig, MixtureOptions):
    strategy: Literal["avg", "learned-avg"] = Field(
        "learned-avg",
        description="learned-avg: train a router, experts frozen | avg: write the "
        "equal-weight bundle (no training, no --data).",
    )
    experts: list[Path] = Field(
        default_factory=list, json_schema_extra=cli(MIXTURE),
        description="A folder whose sub-folders are expert run dirs, or a run dir; repeat for "
        "several.",
    )
    cache_log_probs: bool = Field(
        True, json_schema_extra=cli(flag="--cache-log-probs/--no-cache-log-probs"),
        description="Keep the frozen experts' target log-probs on disk (fp16) and reuse them "
        "from the second epoch on.",
    )
    seq_len: int | None = Field(
        None, ge=2, json_schema_extra=cli(MIXTURE),
        description="Window length (default: the experts' context or the data's, the shorter).",
    )
    keep_stage_checkpoints: bool = Field(  # a finished stage is never resumed: its router
        False, json_schema_extra=cli(TRAIN),  # snapshot (and adapted expert) is what counts
        description="Staged routers: keep each finished stage's trainer checkpoints "
        "(optimizer state; by default removed once the stage's snapshot is saved).",
    )

    @model_validator(mode="after")
    def _check_ignored(self) -> TrainRouterConfig:
        refuse_stage_budget_without_stages(self)
        return self

    def refuse_training_options_for_avg(self) -> None:
        """`train-router --strategy avg` writes a bundle: nothing is trained, no data read,
        so a training option typed with it is refused. Checked on the command line only: a
        library caller may build every strategy from one shared set of training options."""
        if self.strategy == "avg":
            why = "to a trained router, not to --strategy avg (an equal-weight bundle, no training)"
            try:
                refuse_ignored(self, {name: (False, why) for name in _TRAINING_ONLY})
            except ValueError as exc:  # outside validation: the CLI's one line
                raise TimoeError(str(exc)) from None


class CoadaptConfig(TrainingConfig, MixtureOptions):
    experts: list[Path] = TrainRouterConfig.model_fields["experts"]  # the same option
    lr: float = Field(1e-4, gt=0.0, description="Peak learning rate.", json_schema_extra=cli(TRAIN))
    router: Path | None = Field(
        None, json_schema_extra=cli(MIXTURE),
        description="Start from this bundle's router (e.g. one from `train-router --strategy "
        "learned-avg`); default: a fresh router, equal to avg at the start.",
    )
    seq_len: int | None = TrainRouterConfig.model_fields["seq_len"]  # the same option
    keep_stage_checkpoints: bool = TrainRouterConfig.model_fields["keep_stage_checkpoints"]
    snapshot_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", json_schema_extra=cli(TRAIN),
        description="Storage dtype of the adapted experts (one per router stage; bfloat16: "
        "half the bytes, loaded as float32; the next stage goes on from what is stored).",
    )

    @model_validator(mode="after")
    def _check_ignored(self) -> CoadaptConfig:
        refuse_stage_budget_without_stages(self)
        refuse_ignored(self, {"snapshot_dtype": (
            self.policy != "inclusive", "to a staged coadapt (--policy point-in-time), whose "
            "adapted experts are stored one per router stage")})
        return self


# What only a trained router reads (train-router --strategy avg trains nothing).
_TRAINING_ONLY = ("data", "max_steps", "max_tokens", "steps_per_stage", "cutoff_every",
                  "batch_size",
                  "grad_accum", "lr", "min_lr_ratio", "warmup_fraction", "decay_fraction",
                  "decay_shape", "weight_decay", "beta1", "beta2", "grad_clip", "seed",
                  "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
                  "nproc_per_node", "nnodes", "wandb", "entropy_coef", "balance_coef",
                  "z_loss_coef", "router_embed_dim", "router_hidden_dim", "router_date_features",
                  "cache_log_probs", "seq_len")


def refuse_stage_budget_without_stages(cfg: TrainingConfig) -> None:
    """--steps-per-stage is the budget of a staged router (policy point-in-time); under
    --policy inclusive there is one run, budgeted by --max-steps/--max-tokens."""
    policy = getattr(cfg, "policy", "point-in-time")
    staged = policy in ("point-in-time", "strict")
    why = "to a staged router (--policy point-in-time); with --policy inclusive give --max-steps"
    refuse_ignored(cfg, {"steps_per_stage": (staged, why), "cutoff_every": (staged, why)})


# ----------------------------------------------------------------- evaluation


_MODEL_HELP = "TiMoE bundle, expert/dense run dir, or folder of expert run dirs."
_STRATEGY_HELP = ("avg | learned-avg | coadapt | expert:YEAR | dense (a dense run's final, "
                  "all-years weights) | dense-series (its snapshots, leak-free) "
                  "(default: the bundle's own).")
_POLICY_HELP = "Eligibility: point-in-time | strict (its alias) | inclusive (default: the bundle's)."


class EvaluateConfig(StrictModel):
    """`timoe evaluate` (one model) and `timoe compare` (`models`, several)."""

    model: Path | None = Field(None, description=_MODEL_HELP)
    models: list[str] = Field(  # compare: PATH or PATH:STRATEGY each
        default_factory=list, json_schema_extra=cli(flag="--model"),
        description="PATH or PATH:STRATEGY, repeated: a bundle (runs/timoe, "
        "runs/timoe:learned-avg, runs/timoe:expert:2016), a dense run dir (runs/dense, or "
        "runs/dense:dense-series for its snapshots, leak-free), a folder of runs.",
    )
    strategy: str | None = Field(None, description=_STRATEGY_HELP)
    query_date: str | None = Field(
        None, description="Read everything as of DATE (YYYY, YYYY-MM or YYYY-MM-DD); "
        "default: each document's own year, each question's own date.",
    )
    policy: Literal["point-in-time", "strict", "inclusive"] | None = Field(
        None, description=_POLICY_HELP
    )
    answer_cutoffs: AnswerCutoffs = Field(
        "any", description="any | month | quarter | year: answer only from artefacts (expert "
        "snapshots, router snapshots) whose data cutoff is such a period end, so a monthly "
        "build answers as a yearly one would (default any: the latest usable).",
    )
    data: Path | None = Field(None, description="Prepared data dir: val perplexity.")
    tsqa: str | None = Field(
        None, description="Temporal QA: builtin | FILE.json/.jsonl | hf:NAME[:SPLIT]."
    )
    tsqa_question_field: str = Field("question", description="TSQA field of the question.")
    tsqa_choices_field: str = Field("choices", description="TSQA field of the choices.")
    tsqa_answer_field: str = Field("answer", description="TSQA field of the correct answer.")
    tsqa_labels_field: str = Field(
        "labels", description="TSQA field of the choices' labels (correct/past/future/irrelevant)."
    )
    tsqa_year_field: str = Field("year", description="TSQA field of the question's year.")
    # When a choice is an object rather than a string: where its text and label are.
    tsqa_choice_text_field: str = "text"
    tsqa_choice_label_field: str = "label"
    json_out: Path | None = Field(
        None, description="Write the report as JSON.", json_schema_extra=cli(flag="--json")
    )
    plot: Path | None = Field(None, description="Write a PNG plot.")
    matrix: bool = Field(
        False, description="Also a query date x data year perplexity matrix.",
        json_schema_extra=cli(flag="--matrix/--no-matrix"),
    )
    tsqa_schema: Literal["timoe", "tsqa-release"] | None = Field(
        None, description="Named TSQA schema: timoe (default) or tsqa-release (the published "
        "TSQA's field names).")
    tsqa_field: dict[str, str] = Field(
        default_factory=dict, json_schema_extra=cli(repeat=True),
        description="PART=KEY, repeatable: where a record keeps question, choices, text, "
        "label, labels, answer or year (e.g. choices=options); over the schema and the "
        "*_field options.")
    tsqa_label: dict[str, str] = Field(
        default_factory=dict, json_schema_extra=cli(repeat=True),
        description="OURS=THEIRS, repeatable: the source's value for correct, past, future or "
        "irrelevant (e.g. correct=gold).")
    lm_eval_tasks: list[str] | None = Field(
        None, description="Also run these lm-evaluation-harness tasks (comma separated, e.g. "
        "arc_easy,hellaswag; needs timoe[eval]) and add their scores.")
    lm_eval_include_path: Path | None = Field(
        None, description="Folder of extra lm-eval task YAMLs.")
    lm_eval_limit: int | None = Field(None, ge=1, description="Documents per lm-eval task.")
    lm_eval_date_field: str | None = Field(
        None, description="Field of the lm-eval docs giving each document's date.")
    # Query dates of the matrix rows; default: every data year.
    matrix_query_dates: list[str] | None = None
    max_docs: int | None = Field(
        None, ge=1, description="At most N held-out windows per data year (fixed subsample)."
    )
    max_items: int | None = Field(None, ge=1, description="At most N TSQA items.")
    batch_size: int = Field(8, ge=1, description="Windows per forward.")
    tsqa_batch_size: int = Field(16, ge=1, description="TSQA items per forward (4 rows each).")
    seq_len: int | None = Field(
        None, ge=1, description="Window length in tokens (default: the model's context or "
        "the data's, the shorter).",
    )
    amp: bool | None = Field(  # None: bf16 autocast on CUDA, fp32 on CPU
        None, description="bf16 autocast (CUDA).", json_schema_extra=cli(flag="--amp/--no-amp")
    )
    device: DeviceName = Field("auto", description=DEVICE_HELP)


    @field_validator("tsqa_field", "tsqa_label", mode="before")
    @classmethod
    def _assignments(cls, value: Any) -> Any:
        """Flags give ['a=b', ...]; a config file gives a mapping."""
        return parse_assignments(value) if isinstance(value, (list, tuple)) else value

    @field_validator("lm_eval_tasks", mode="before")
    @classmethod
    def _task_list(cls, value: Any) -> Any:
        """`--lm-eval-tasks a,b` (and repeated flags) -> ['a', 'b']."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [t.strip() for v in value for t in str(v).split(",") if t.strip()] or None
        return value

    @model_validator(mode="after")
    def _check_ignored(self) -> EvaluateConfig:
        data = self.data is not None or bool(self.models)  # compare: checked per entry
        tsqa = self.tsqa is not None or bool(self.models)
        tasks = bool(self.lm_eval_tasks)
        refuse_ignored(self, {
            "matrix": (data, "with --data (a perplexity matrix)"),
            "matrix_query_dates": (data and self.matrix, "with --data --matrix"),
            "max_docs": (data, "with --data"),
            "max_items": (tsqa, "with --tsqa"),
            "tsqa_schema": (tsqa, "with --tsqa"),
            "tsqa_field": (tsqa, "with --tsqa"),
            "tsqa_label": (tsqa, "with --tsqa"),
            "lm_eval_include_path": (tasks, "with --lm-eval-tasks"),
            "lm_eval_limit": (tasks, "with --lm-eval-tasks"),
            "lm_eval_date_field": (tasks, "with --lm-eval-tasks"),
        })
        return self


class GenerateConfig(StrictModel):
    model: Path | None = Field(None, description=_MODEL_HELP)
    query_date: str | None = Field(
        None, description="Generate as of DATE (YYYY, YYYY-MM or YYYY-MM-DD); required for a "
        "mixture.",
    )
    prompt: str | None = Field(None, description="Text to continue (may be empty).")
    strategy: str | None = Field(None, description=_STRATEGY_HELP)
    max_new_tokens: int = Field(64, ge=1, description="At most N tokens.")
    # 0 means greedy; below 1e-3 the scaled log-probs overflow to inf (NaN probabilities).
    temperature: float = Field(1.0, ge=0.0, le=1000.0,
                               description="Sampling temperature (0: greedy).")
    top_k: int | None = Field(None, ge=1, description="Sample among the k likeliest tokens.")
    greedy: bool = Field(
        False, description="Always the likeliest token.",
        json_schema_extra=cli(flag="--greedy/--sample"),
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Sampling seed.")
    policy: Literal["point-in-time", "strict", "inclusive"] | None = Field(  # default: the bundle's
        None, description=_POLICY_HELP
    )
    use_cache: bool = Field(  # False: recompute the whole context every token (for checks)
        True, description="KV cache; --no-cache recomputes every token.",
        json_schema_extra=cli(flag="--cache/--no-cache"),
    )
    device: DeviceName = Field("auto", description=DEVICE_HELP)

    @model_validator(mode="after")
    def _check_temperature(self) -> "GenerateConfig":
        sampling = "when sampling, not with --greedy (which takes the likeliest token)"
        refuse_ignored(self, {"top_k": (not self.greedy, sampling),
                              "temperature": (not self.greedy, sampling)})
        if 0.0 < self.temperature < 1e-3:
            raise ValueError(
                f"--temperature {self.temperature:g} is too small to sample with (the scaled "
                "log-probs overflow): use 0 or --greedy for greedy decoding, or at least 0.001"
            )
        return self


class DemoConfig(StrictModel):
    out: Path = Field(Path("timoe-demo"), description="Folder of every stage's output.")
    quick: bool = Field(
        False, description="A pipeline check, too small to compare models (a few minutes "
        "on a 2-core CPU).",
        json_schema_extra=cli(flag="--quick/--full"),
    )
    overwrite: bool = Field(  # start over when --out holds a demo of other settings
        False, description="Start over when --out holds a demo run with other settings.",
        json_schema_extra=cli(flag="--overwrite/--no-overwrite"),
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the corpus and every run.")
    device: DeviceName = Field("auto", description=DEVICE_HELP)
    keep_checkpoints: bool = Field(  # a finished demo stage is never resumed
        False, description="Keep each finished stage's trainer checkpoints (optimizer "
        "state, several times the weights; by default removed once the stage is done).",
    )
    cutoff_every: CutoffEvery = Field(
        "year", description="month | quarter | year: the period of every training stage. "
        "month: a cutoff at each month end, at the yearly compute (averaged bfloat16 "
        "snapshots, no extra step) and about 4 times the disk; the stale-answer table then "
        "compares month-end with year-end artefacts.",
    )


# ------------------------------------------------------------------ interop


class ExportConfig(StrictModel):
    """`timoe export`: timoe models as folders other tools open."""

    model: Path | None = Field(None, description="Run dir, TiMoE bundle, folder of expert run "
                               "dirs, or hf:ORG/NAME.")
    format: Literal["hf"] = Field("hf", description="hf: a transformers GPT2LMHeadModel folder "
                                  "with the GPT-2 tokenizer files.")
    out: Path | None = Field(None, description="Folder to write (must not exist, or be empty).")
    query_date: str | None = Field(None, description="With a bundle or folder: export only the "
                                   "experts usable as of DATE (default: every expert).")
    policy: Literal["inclusive", "strict"] | None = Field(
        None, description="Eligibility for --query-date (default: the bundle's).")


class ImportConfig(StrictModel):
    """`timoe import`: other checkpoints as timoe run dirs."""

    format: Literal["gptbase", "hf"] | None = Field(
        None, description="gptbase: the paper code's GPTBase folder (config.json + weights); "
        "hf: a transformers GPT2LMHeadModel folder.")
    source: str | None = Field(None, description="The folder to read, or hf:ORG/NAME.")
    slice: str | None = Field(None, description="The time slice the model was trained on, "
                              "e.g. 2015-2016 (one year: 2015-2015).")
    data_cutoff: str | None = Field(None, description="Latest date of any text the model saw, "
                                    "YYYY[-MM[-DD]] (default: the slice's last day).")
    kind: Literal["expert", "dense", "base"] = Field(
        "expert", description="expert (one slice), dense (all years) or base (the years up "
        "to --data-cutoff, to start experts from with train-expert --init-from).")
    out: Path | None = Field(None, description="Run dir to write (must not exist, or be empty).")


# ------------------------------------------------------------------ machinery

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class _NoAliasLoader(yaml.SafeLoader):
    """yaml's SafeLoader without anchors and aliases: an option file needs neither, and
    nested aliases (a "billion laughs" file) expand exponentially in memory and time."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in a config file",
                event.start_mark,
            )
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "YAML anchors (&name) are not allowed in a config file",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or TOML file holding one mapping of option names to values."""
    path = Path(path)
    if not path.is_file():
        raise TimoeError(f"config file {path} does not exist: check the --config path")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise TimoeError(
            f"config file {path} is {size} bytes, more than a config file can be "
            f"({MAX_CONFIG_BYTES} bytes): check the --config path"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TimoeError(
            f"config file {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8"
        ) from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml", ".json"):
            data = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader
        else:
            raise TimoeError(f"config file {path} must end in .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, ValueError) as exc:
        # ValueError: a number Python will not convert (an integer of over 4300 digits)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TimoeError(f"config file {path} is not valid: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TimoeError(f"config file {path} must hold a mapping of option: value")
    # Files may use the flag spelling (max-steps) or the field spelling (max_steps).
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def is_saved_config(path: Path, model: type[BaseModel]) -> bool:
    """A config file `save_config` wrote for `model` (safe to replace): a YAML mapping of
    its options, nothing else."""
    try:
        data = read_config_file(path)
    except TimoeError:
        return False
    return set(data) <= set(model.model_fields)


def format_validation_error(exc: ValidationError) -> str:
    """One line naming the field(s) at fault, in the flag spelling users typed."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if loc == "config":
            parts.append(msg)
        else:
            got = repr(err.get("input"))
            got = got if len(got) <= 60 else got[:57] + "..."
            parts.append(f"--{loc.replace('_', '-')}: {msg} (got {got})")
    return "invalid config: " + "; ".join(parts)


def resolve_config(
    model: type[ConfigT], config_file: Path | None, flags: dict[str, Any]
) -> ConfigT:
    """File values, then flags that were given (not None) on top, validated."""
    values: dict[str, Any] = read_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise TimoeError(format_validation_error(exc)) from None


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    return json.loads(cfg.model_dump_json())


def save_config(cfg: BaseModel, directory: Path, filename: str = CONFIG_FILENAME) -> Path:
    """Write the resolved config as YAML beside an output; rerun it with --config."""
    path = Path(directory) / filename
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path
