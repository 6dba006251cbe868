"""The flags every training command shares, defined once.

Each alias is a Typer `Annotated` type, e.g. `max_steps: MaxSteps = None`. Every
default is None, meaning "not given": `load_config` then keeps the config file's value
or the config model's default, so a flag only overrides what the user typed.

`training_options` adds all of them to a command at once and hands the command the
given values as one dict:

    @handles_errors
    @training_options
    def coadapt(experts: ..., config: ConfigPath = None, *, training: dict) -> None:
        cfg = load_config(CoadaptConfig, config, experts=experts, **training)

The names of the dict's keys are TrainingConfig's field names.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

_TRAIN = "Training"
_WORKERS = "Workers"
_RUN = "Run dir, checkpoints and logging"

Data = Annotated[
    Path | None,
    typer.Option(
        "--data", help="Prepared data dir (from `timoe prepare-data`).", rich_help_panel=_RUN
    ),
]
Out = Annotated[
    Path | None,
    typer.Option("--out", help="Run dir to write (and to resume from).", rich_help_panel=_RUN),
]
MaxSteps = Annotated[
    int | None,
    typer.Option(
        help="Optimizer steps of the whole run (or give --max-tokens; default: one epoch).",
        rich_help_panel=_TRAIN,
    ),
]
MaxTokens = Annotated[
    int | None,
    typer.Option(
        help="Training tokens of the whole run; sets --max-steps.", rich_help_panel=_TRAIN
    ),
]
StopAtStep = Annotated[
    int | None,
    typer.Option(
        help="Stop at this step with a checkpoint (the schedule still spans "
        "--max-steps); rerun without it to go on.",
        rich_help_panel=_TRAIN,
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(help="Windows per micro-batch per worker (default 8).", rich_help_panel=_TRAIN),
]
GradAccum = Annotated[
    int | None,
    typer.Option(help="Micro-batches per optimizer step (default 1).", rich_help_panel=_TRAIN),
]
Lr = Annotated[float | None, typer.Option(help="Peak learning rate.", rich_help_panel=_TRAIN)]
MinLrRatio = Annotated[
    float | None,
    typer.Option(
        help="Floor of the decay as a fraction of the peak (default 0.1).", rich_help_panel=_TRAIN
    ),
]
WarmupFraction = Annotated[
    float | None,
    typer.Option(help="Warmup share of the steps (default 0.05).", rich_help_panel=_TRAIN),
]
DecayFraction = Annotated[
    float | None,
    typer.Option(help="Decay share of the steps (default 0.1).", rich_help_panel=_TRAIN),
]
DecayShape = Annotated[
    str | None,
    typer.Option(help="linear | cosine | 1-sqrt (default linear).", rich_help_panel=_TRAIN),
]
WeightDecay = Annotated[
    float | None,
    typer.Option(help="AdamW weight decay on matrices (default 0.1).", rich_help_panel=_TRAIN),
]
Beta1 = Annotated[
    float | None, typer.Option(help="AdamW beta1 (default 0.9).", rich_help_panel=_TRAIN)
]
Beta2 = Annotated[
    float | None, typer.Option(help="AdamW beta2 (default 0.95).", rich_help_panel=_TRAIN)
]
GradClip = Annotated[
    float | None,
    typer.Option(
        help="Clip the gradient norm to this (0: off) (default 1.0).", rich_help_panel=_TRAIN
    ),
]
Amp = Annotated[
    bool | None,
    typer.Option(
        "--amp/--no-amp",
        help="bf16 autocast (default on for CUDA, off for CPU).",
        rich_help_panel=_TRAIN,
    ),
]
Device = Annotated[
    str | None, typer.Option(help="auto | cpu | cuda (default auto).", rich_help_panel=_TRAIN)
]
Compile = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the model (default on for CUDA, off for CPU).",
        rich_help_panel=_TRAIN,
    ),
]
Tf32 = Annotated[
    bool | None,
    typer.Option(
        "--tf32/--no-tf32",
        help="TF32 matmuls on CUDA (default on; no effect on CPU).",
        rich_help_panel=_TRAIN,
    ),
]
FusedAdamw = Annotated[
    bool | None,
    typer.Option(
        "--fused-adamw/--no-fused-adamw",
        help="The fused AdamW kernel (default on for CUDA, off for CPU).",
        rich_help_panel=_TRAIN,
    ),
]
Seed = Annotated[
    int | None,
    typer.Option(help="Seed of init and data order (default 0).", rich_help_panel=_TRAIN),
]
EvalEvery = Annotated[
    int | None,
    typer.Option(help="Evaluate every N steps (0: at the end only).", rich_help_panel=_RUN),
]
EvalBatches = Annotated[
    int | None,
    typer.Option(help="Validation batches per evaluation (default 8).", rich_help_panel=_RUN),
]
CheckpointEvery = Annotated[
    int | None,
    typer.Option(help="Checkpoint every N steps (0: at the end only).", rich_help_panel=_RUN),
]
KeepCheckpoints = Annotated[
    int | None, typer.Option(help="Complete checkpoints to keep (default 2).", rich_help_panel=_RUN)
]
LogEvery = Annotated[
    int | None, typer.Option(help="Log every N steps (default 10).", rich_help_panel=_RUN)
]
LogWindows = Annotated[
    bool | None,
    typer.Option("--log-windows", hidden=True, help="Debug: log the windows each rank reads."),
]
NprocPerNode = Annotated[
    int | None,
    typer.Option(help="Worker processes on this machine (default 1).", rich_help_panel=_WORKERS),
]
Nnodes = Annotated[
    int | None, typer.Option(help="Machines in the run (default 1).", rich_help_panel=_WORKERS)
]
NodeRank = Annotated[
    int | None, typer.Option(help="This machine's rank (0..nnodes-1).", rich_help_panel=_WORKERS)
]
RdzvEndpoint = Annotated[
    str | None,
    typer.Option(help="HOST:PORT of node rank 0 (several nodes).", rich_help_panel=_WORKERS),
]
MaxRestarts = Annotated[
    int | None,
    typer.Option(
        help="Restarts of failed workers (they resume) (default 0).", rich_help_panel=_WORKERS
    ),
]
Wandb = Annotated[
    str | None,
    typer.Option(help="disabled | offline | online (default disabled).", rich_help_panel=_RUN),
]
WandbProject = Annotated[
    str | None, typer.Option(help="wandb project (default timoe).", rich_help_panel=_RUN)
]
Resume = Annotated[
    bool | None,
    typer.Option(
        "--resume/--no-resume",
        help="Resume from the run dir's last checkpoint (default resume).",
        rich_help_panel=_RUN,
    ),
]
Overwrite = Annotated[
    bool | None,
    typer.Option(
        "--overwrite", help="Start over, clearing an existing run in --out.", rich_help_panel=_RUN
    ),
]

# The mixture commands (train-router, coadapt): MixtureOptions fields and their inputs.
_MIX = "Mixture"
Experts = Annotated[
    list[Path] | None,
    typer.Option(
        "--experts",
        help="A folder whose sub-folders are expert run dirs, or a run dir; repeat for several.",
        rich_help_panel=_MIX,
    ),
]
Policy = Annotated[
    str | None,
    typer.Option(help="Eligibility: inclusive | strict (default inclusive).", rich_help_panel=_MIX),
]
TopK = Annotated[
    int | None,
    typer.Option(help="Router: keep the k largest weights per token.", rich_help_panel=_MIX),
]
MixSeqLen = Annotated[
    int | None,
    typer.Option(
        "--seq-len",
        help="Window length (default: the experts' context or the data's, the shorter).",
        rich_help_panel=_MIX,
    ),
]
EntropyCoef = Annotated[
    float | None,
    typer.Option(help="Router entropy loss weight (default 0.01).", rich_help_panel=_MIX),
]
BalanceCoef = Annotated[
    float | None,
    typer.Option(help="Router load-balancing loss weight (default 0.01).", rich_help_panel=_MIX),
]
ZLossCoef = Annotated[
    float | None,
    typer.Option(help="Router z-loss weight (default 1e-4).", rich_help_panel=_MIX),
]
RouterEmbedDim = Annotated[
    int | None,
    typer.Option(help="Router token embedding width (default 64).", rich_help_panel=_MIX),
]
RouterHiddenDim = Annotated[
    int | None, typer.Option(help="Router hidden width (default 128).", rich_help_panel=_MIX)
]
RouterDateFeatures = Annotated[
    bool | None,
    typer.Option(
        "--router-date-features/--no-router-date-features",
        help="Feed the query date's eligibility mask to the router (default on).",
        rich_help_panel=_MIX,
    ),
]

# TrainingConfig field -> its option type, in --help order.
TRAINING_OPTIONS: dict[str, Any] = {
    "data": Data,
    "out": Out,
    "max_steps": MaxSteps,
    "max_tokens": MaxTokens,
    "stop_at_step": StopAtStep,
    "batch_size": BatchSize,
    "grad_accum": GradAccum,
    "lr": Lr,
    "min_lr_ratio": MinLrRatio,
    "warmup_fraction": WarmupFraction,
    "decay_fraction": DecayFraction,
    "decay_shape": DecayShape,
    "weight_decay": WeightDecay,
    "beta1": Beta1,
    "beta2": Beta2,
    "grad_clip": GradClip,
    "amp": Amp,
    "device": Device,
    "compile": Compile,
    "tf32": Tf32,
    "fused_adamw": FusedAdamw,
    "seed": Seed,
    "nproc_per_node": NprocPerNode,
    "nnodes": Nnodes,
    "node_rank": NodeRank,
    "rdzv_endpoint": RdzvEndpoint,
    "max_restarts": MaxRestarts,
    "eval_every": EvalEvery,
    "eval_batches": EvalBatches,
    "checkpoint_every": CheckpointEvery,
    "keep_checkpoints": KeepCheckpoints,
    "log_every": LogEvery,
    "wandb": Wandb,
    "wandb_project": WandbProject,
    "resume": Resume,
    "overwrite": Overwrite,
    "log_windows": LogWindows,
}

F = TypeVar("F", bound=Callable[..., Any])


def training_options(fn: F) -> F:
    """Add every shared training flag to a Typer command; it receives them as `training`."""
    sig = inspect.signature(fn, eval_str=True)  # real Annotated types, not strings
    own = [p for p in sig.parameters.values() if p.name != "training"]
    clash = set(TRAINING_OPTIONS) & {p.name for p in own}
    if clash:
        raise TypeError(f"{fn.__name__} redefines shared training options: {sorted(clash)}")
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)
        for name, ann in TRAINING_OPTIONS.items()
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        training = {name: kwargs.pop(name, None) for name in TRAINING_OPTIONS}
        return fn(*args, training=training, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + extra)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
