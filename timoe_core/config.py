"""Configs for every command: pydantic models, loaded from YAML/TOML, overridden by flags.

One rule for all commands: `resolve_config(Model, config_file, flags)` reads the file
(if any), lays every flag that was given (not None) over it, and validates. The
resolved config is saved next to the command's output with `save_config`, so a run
can be repeated with `--config that-file`.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from timoe_core.errors import TimoeError
from timoe_core.io import atomic_write_text

CONFIG_FILENAME = "config.yaml"


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a config file must not be silently ignored."""

    # allow_inf_nan=False: `--lr inf` or `weight_decay: .nan` is refused here, at the
    # boundary, before anything is written (json would save it as null).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Seeds feed torch, numpy and per-step/per-rank derivations (seed + step): keep them in
# a range every one of those accepts.
MAX_SEED = 2**31 - 1
# A config file is a few lines; anything this large is a mistake or an attack.
MAX_CONFIG_BYTES = 1 << 20


# --------------------------------------------------------------------------- data


class PrepareDataConfig(StrictModel):
    source: str = "builtin"
    out: Path | None = None
    text_field: str = "text"
    date_field: str = "date"
    seq_len: int = Field(1024, ge=8)
    val_fraction: float = Field(0.005, gt=0.0, le=0.5)
    start_year: int = Field(2013, ge=1900, le=2200)
    end_year: int = Field(2024, ge=1900, le=2200)
    slice_years: int = Field(2, ge=1)
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    overwrite: bool = False
    skip_bad_rows: bool = False
    num_shards: int = Field(1, ge=1)
    shard_index: int = Field(0, ge=0)
    max_docs: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # Size of the built-in corpus: documents generated per year.
    builtin_docs_per_year: int = Field(400, ge=1)
    # Split of an hf:NAME / fineweb-edu source.
    hf_split: str = "train"
    merge: list[Path] | None = None

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
        return self


# ----------------------------------------------------------------------- training


class TrainingConfig(StrictModel):
    """What every training command shares: optimisation, workers, checkpoints, logging."""

    data: Path | None = None
    out: Path | None = None
    max_steps: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    warmup_fraction: float = Field(0.05, ge=0.0, le=1.0)
    decay_fraction: float = Field(0.1, ge=0.0, le=1.0)
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "linear"
    weight_decay: float = Field(0.1, ge=0.0)
    beta1: float = Field(0.9, gt=0.0, lt=1.0)
    beta2: float = Field(0.95, gt=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0)
    amp: bool | None = None  # None: bf16 on CUDA, off on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    seed: int = Field(0, ge=0, le=MAX_SEED)
    eval_every: int = Field(0, ge=0)  # 0: only at the end
    eval_batches: int = Field(8, ge=1)
    checkpoint_every: int = Field(0, ge=0)  # 0: only at the end
    keep_checkpoints: int = Field(2, ge=1)  # complete checkpoints kept in RUN_DIR/checkpoints
    # Stop (with a checkpoint) at this step of the --max-steps schedule; rerun to go on.
    stop_at_step: int | None = Field(None, ge=1)
    # Debug: each rank logs the window indices it read to RUN_DIR/debug/windows-rankR.jsonl.
    log_windows: bool = False
    log_every: int = Field(10, ge=1)
    nproc_per_node: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0)
    rdzv_endpoint: str | None = None
    max_restarts: int = Field(0, ge=0)
    wandb: Literal["disabled", "offline", "online"] = "disabled"
    wandb_project: str = "timoe"
    resume: bool = True
    overwrite: bool = False

    @model_validator(mode="after")
    def _check_budget(self) -> "TrainingConfig":
        if self.warmup_fraction + self.decay_fraction > 1.0:
            raise ValueError("warmup_fraction + decay_fraction must be at most 1")
        if self.max_steps is not None and self.max_tokens is not None:
            raise ValueError("give --max-steps or --max-tokens, not both")
        return self


class TrainExpertConfig(TrainingConfig):
    year: int | None = None
    all_years: bool = False
    preset: Literal["tiny", "small", "gpt2-124m"] = "tiny"
    n_layer: int | None = Field(None, ge=1)
    n_head: int | None = Field(None, ge=1)
    n_embd: int | None = Field(None, ge=1)
    seq_len: int | None = Field(None, ge=2)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check_target(self) -> "TrainExpertConfig":
        if (self.year is None) == (not self.all_years):
            raise ValueError("give exactly one of --year YEAR or --all-years")
        return self


class MixtureOptions(StrictModel):
    """How experts are combined; saved in the bundle."""

    policy: Literal["inclusive", "strict"] = "inclusive"
    top_k: int | None = Field(None, ge=1)
    entropy_coef: float = Field(0.01, ge=0.0)
    balance_coef: float = Field(0.01, ge=0.0)
    z_loss_coef: float = Field(1e-4, ge=0.0)
    # Router shape (learned-avg / coadapt): own token embedding, prefix-mean pooled, MLP.
    router_embed_dim: int = Field(64, ge=1, le=1 << 16)
    router_hidden_dim: int = Field(128, ge=1, le=1 << 16)
    # Feed the query date's eligibility mask to the router (it may prefer recent experts).
    router_date_features: bool = True


class TrainRouterConfig(TrainingConfig, MixtureOptions):
    strategy: Literal["avg", "learned-avg"] = "learned-avg"
    experts: list[Path] = Field(default_factory=list)
    # Frozen experts' target log-probs kept on disk (fp16) and reused from epoch 2 on.
    cache_log_probs: bool = True
    seq_len: int | None = Field(None, ge=2)  # default: min(experts' block_size, data seq_len)


class CoadaptConfig(TrainingConfig, MixtureOptions):
    experts: list[Path] = Field(default_factory=list)
    lr: float = Field(1e-4, gt=0.0)
    # Start from this bundle's router (e.g. a learned-avg one); default: a fresh router.
    router: Path | None = None
    seq_len: int | None = Field(None, ge=2)  # default: min(experts' block_size, data seq_len)


# ----------------------------------------------------------------- evaluation


class EvaluateConfig(StrictModel):
    """`timoe evaluate` (one model) and `timoe compare` (`models`, several)."""

    model: Path | None = None
    models: list[str] = Field(default_factory=list)  # compare: PATH or PATH:STRATEGY each
    strategy: str | None = None  # avg | learned-avg | coadapt | expert:YEAR | dense
    query_date: str | None = None
    policy: Literal["inclusive", "strict"] | None = None
    data: Path | None = None
    tsqa: str | None = None
    tsqa_question_field: str = "question"
    tsqa_choices_field: str = "choices"
    tsqa_answer_field: str = "answer"
    tsqa_labels_field: str = "labels"
    tsqa_year_field: str = "year"
    # When a choice is an object rather than a string: where its text and label are.
    tsqa_choice_text_field: str = "text"
    tsqa_choice_label_field: str = "label"
    json_out: Path | None = None
    plot: Path | None = None
    matrix: bool = False
    # Query dates of the matrix rows; default: every data year.
    matrix_query_dates: list[str] | None = None
    max_docs: int | None = Field(None, ge=1)  # held-out windows per data year
    max_items: int | None = Field(None, ge=1)  # TSQA items
    batch_size: int = Field(8, ge=1)  # windows per forward pass
    tsqa_batch_size: int = Field(16, ge=1)  # TSQA items per forward pass (4 rows each)
    seq_len: int | None = Field(None, ge=1)  # default: min(model block_size, data seq_len)
    amp: bool | None = None  # None: bf16 autocast on CUDA, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"


class GenerateConfig(StrictModel):
    model: Path | None = None
    query_date: str | None = None
    prompt: str | None = None
    strategy: str | None = None
    max_new_tokens: int = Field(64, ge=1)
    # 0 means greedy; below 1e-3 the scaled log-probs overflow to inf (NaN probabilities).
    temperature: float = Field(1.0, ge=0.0, le=1000.0)
    top_k: int | None = Field(None, ge=1)
    greedy: bool = False
    seed: int = Field(0, ge=0, le=MAX_SEED)
    policy: Literal["inclusive", "strict"] | None = None  # default: the bundle's
    use_cache: bool = True  # False: recompute the whole context every token (for checks)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _check_temperature(self) -> "GenerateConfig":
        if 0.0 < self.temperature < 1e-3:
            raise ValueError(
                f"--temperature {self.temperature:g} is too small to sample with (the scaled "
                "log-probs overflow): use 0 or --greedy for greedy decoding, or at least 0.001"
            )
        return self


class DemoConfig(StrictModel):
    out: Path = Path("timoe-demo")
    quick: bool = False
    overwrite: bool = False  # start over when --out holds a demo of other settings
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"


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
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TimoeError(f"config file {path} is not valid: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TimoeError(f"config file {path} must hold a mapping of option: value")
    # Files may use the flag spelling (max-steps) or the field spelling (max_steps).
    return {str(k).replace("-", "_"): v for k, v in data.items()}


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
