"""How experts are combined (`MixtureOptions`, saved in a bundle) and the configs of the
commands that build a mixture: `train-router` and `coadapt`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from timoe_core.config.fields import MIXTURE, TRAIN, StrictModel, cli, refuse_ignored
from timoe_core.config.training import TrainingConfig
from timoe_core.errors import TimoeError


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


# The options train-router and coadapt share, declared once (typed as their values:
# the pydantic plugin reads a Field as its default).
_EXPERTS: list[Path] = Field(
    default_factory=list, json_schema_extra=cli(MIXTURE),
    description="A folder whose sub-folders are expert run dirs, or a run dir; repeat for "
    "several.",
)
_SEQ_LEN: int | None = Field(
    None, ge=2, json_schema_extra=cli(MIXTURE),
    description="Window length (default: the experts' context or the data's, the shorter).",
)
_SNAPSHOT_DTYPE: Literal["float32", "bfloat16"] = Field(  # default: as train-expert's
    "bfloat16", json_schema_extra=cli(TRAIN),
    description="Staged routers: storage dtype of the router snapshots and (coadapt) of the "
    "adapted experts, one per router stage (bfloat16: half the bytes, loaded as float32; "
    "the next stage goes on from what is stored).",
)
_KEEP_STAGE_CHECKPOINTS: bool = Field(  # a finished stage is never resumed: its router
    False, json_schema_extra=cli(TRAIN),  # snapshot (and adapted expert) is what counts
    description="Staged routers: keep each finished stage's trainer checkpoints "
    "(optimizer state; by default removed once the stage's snapshot is saved).",
)


class TrainRouterConfig(TrainingConfig, MixtureOptions):
    strategy: Literal["avg", "learned-avg"] = Field(
        "learned-avg",
        description="learned-avg: train a router, experts frozen | avg: write the "
        "equal-weight bundle (no training, no --data).",
    )
    experts: list[Path] = _EXPERTS
    cache_log_probs: bool = Field(
        True, json_schema_extra=cli(flag="--cache-log-probs/--no-cache-log-probs"),
        description="Keep the frozen experts' target log-probs on disk (fp16) and reuse them "
        "from the second epoch on.",
    )
    seq_len: int | None = _SEQ_LEN
    keep_stage_checkpoints: bool = _KEEP_STAGE_CHECKPOINTS
    snapshot_dtype: Literal["float32", "bfloat16"] = _SNAPSHOT_DTYPE

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


AdaptedWeights = Literal["all", "blocks"]  # what coadapt trains of the active expert


class CoadaptConfig(TrainingConfig, MixtureOptions):
    experts: list[Path] = _EXPERTS
    lr: float = Field(1e-4, gt=0.0, description="Peak learning rate.", json_schema_extra=cli(TRAIN))
    router: Path | None = Field(
        None, json_schema_extra=cli(MIXTURE),
        description="Start from this bundle's router (e.g. one from `train-router --strategy "
        "learned-avg`); default: a fresh router, equal to avg at the start.",
    )
    seq_len: int | None = _SEQ_LEN
    keep_stage_checkpoints: bool = _KEEP_STAGE_CHECKPOINTS
    snapshot_dtype: Literal["float32", "bfloat16"] = _SNAPSHOT_DTYPE
    # Default blocks: an adapted expert per month end is then a small delta, and the
    # monthly demo answered the same with `all` (README)
    adapted_weights: AdaptedWeights = Field(
        "blocks", json_schema_extra=cli(TRAIN),
        description="What coadapt trains of the active expert. all: every weight | blocks: "
        "all but the token embedding (tied to the output layer), which stays the expert's "
        "own, so a staged run stores each adapted expert as a delta from the artefact it "
        "went on from (at the demo's size, 6% of the expert's bytes).",
    )

    @model_validator(mode="after")
    def _check_ignored(self) -> CoadaptConfig:
        refuse_stage_budget_without_stages(self)
        return self


# What only a trained router reads (train-router --strategy avg trains nothing).
_TRAINING_ONLY = ("data", "max_steps", "max_tokens", "steps_per_stage", "cutoff_every",
                  "batch_size",
                  "grad_accum", "lr", "min_lr_ratio", "warmup_fraction", "decay_fraction",
                  "decay_shape", "weight_decay", "beta1", "beta2", "grad_clip", "seed",
                  "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
                  "nproc_per_node", "nnodes", "wandb", "entropy_coef", "balance_coef",
                  "z_loss_coef", "router_embed_dim", "router_hidden_dim", "router_date_features",
                  "cache_log_probs", "seq_len", "snapshot_dtype")


def refuse_stage_budget_without_stages(cfg: TrainingConfig) -> None:
    """--steps-per-stage is the budget of a staged router (policy point-in-time); under
    --policy inclusive there is one run, budgeted by --max-steps/--max-tokens."""
    policy = getattr(cfg, "policy", "point-in-time")
    staged = policy in ("point-in-time", "strict")
    why = "to a staged router (--policy point-in-time); with --policy inclusive give --max-steps"
    stored = ("to a staged router (--policy point-in-time), whose snapshots (and adapted "
              "experts) are stored one per stage")
    refuse_ignored(cfg, {"steps_per_stage": (staged, why), "cutoff_every": (staged, why),
                         "snapshot_dtype": (staged, stored)})
