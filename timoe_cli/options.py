"""Command-line options derived from the config models: each option is declared once.

An option's type, default, bounds and help live on its pydantic field in
timoe_core/config/ (`Field(default, ge=..., description=..., json_schema_extra=
cli(panel, flag))`); the config-file key is the field name, the flag is
`--field-name` unless `cli(flag=...)` says otherwise. `config_options` turns fields
into Typer parameters and hands the command the given values as one dict:

    @handles_errors
    @config_options(EvaluateConfig, ["model", "strategy", "query_date", ...])
    def evaluate(config: ConfigPath = None, *, flags: dict[str, Any]) -> None:
        cfg = resolve_config(EvaluateConfig, config, flags)

Every Typer default is None, meaning "not given": `resolve_config` then keeps the
config file's value or the field's default, so a flag only overrides what the user
typed. --help shows the field's default (Typer's "[default: ...]"), so no help text
repeats one.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from timoe_core.config import TrainingConfig

F = TypeVar("F", bound=Callable[..., Any])

# The fields of TrainingConfig, in --help order: every training command takes them.
TRAINING_FIELDS: tuple[str, ...] = (
    "data", "out", "max_steps", "max_tokens", "steps_per_stage", "cutoff_every", "stop_at_step",
    "batch_size", "grad_accum", "lr",
    "min_lr_ratio", "warmup_fraction", "decay_fraction", "decay_shape", "weight_decay", "beta1",
    "beta2", "grad_clip", "amp", "device", "compile", "tf32", "fused_adamw", "seed",
    "nproc_per_node", "nnodes",
    "node_rank", "rdzv_endpoint", "max_restarts", "eval_every", "eval_batches",
    "checkpoint_every", "keep_checkpoints", "log_every", "wandb", "wandb_project", "resume",
    "overwrite", "log_windows",
)
assert set(TRAINING_FIELDS) == set(TrainingConfig.model_fields)

# The MixtureOptions fields a mixture training command takes, in --help order.
MIXTURE_FIELDS: tuple[str, ...] = (
    "policy", "top_k", "seq_len", "entropy_coef", "balance_coef", "z_loss_coef",
    "router_embed_dim", "router_hidden_dim", "router_date_features",
)


def _cli_type(annotation: Any) -> Any:
    """The Typer type of a field: None dropped, Literal as its values' type."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _cli_type(rest[0]) if len(rest) == 1 else str
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0])
    return annotation


def _shown_default(field: Any, flag: str) -> str | bool:
    default = field.default
    if default is PydanticUndefined or default is None or field.default_factory is not None:
        return False
    if isinstance(default, bool):
        if "/" not in flag:
            return False  # an on-only flag (--overwrite): off unless given
        on, off = (d.strip().removeprefix("--") for d in flag.split("/"))
        return on if default else off
    if isinstance(default, Path):
        return str(default)
    return str(default)


def option_annotation(model: type[BaseModel], name: str) -> Any:
    """`Annotated[type | None, typer.Option(...)]` for the field `name` of `model`."""
    field = model.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    base = list[str] if extra.get("repeat") else _cli_type(field.annotation)
    given, panel = extra.get("flag"), extra.get("panel")
    flag = given if isinstance(given, str) and given else "--" + name.replace("_", "-")
    if base is bool and "flag" not in extra and field.default is not False:
        flag = f"{flag}/--no-{flag.removeprefix('--')}"
    option = typer.Option(
        flag,
        help=field.description,
        show_default=_shown_default(field, flag),
        rich_help_panel=panel if isinstance(panel, str) else None,
        hidden=bool(extra.get("hidden", False)),
    )
    return Annotated[base | None, option]


def config_options(
    model: type[BaseModel], names: Sequence[str], after: Sequence[str] = ()
) -> Callable[[F], F]:
    """Add an option for each field of `model` in `names` (before the command's own
    parameters, e.g. --config) and in `after` (after them) to a Typer command; the
    command receives the given values as `flags` (field -> value, None: not given)."""
    before, after = list(names), list(after)
    every = before + after

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)  # real Annotated types, not strings
        own = [p for p in sig.parameters.values() if p.name != "flags"]
        clash = set(every) & {p.name for p in own}
        if clash:
            raise TypeError(f"{fn.__name__} redefines options of {model.__name__}: {sorted(clash)}")

        def params(fields: list[str]) -> list[inspect.Parameter]:
            return [
                inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                  annotation=option_annotation(model, n))
                for n in fields
            ]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flags = {n: kwargs.pop(n, None) for n in every}
            for n, v in flags.items():  # a repeatable option given no times is "not given"
                if isinstance(v, (list, tuple)):
                    flags[n] = list(v) or None
            return fn(*args, flags=flags, **kwargs)

        wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=params(before) + own + params(after)
        )
        return wrapper  # type: ignore[return-value]

    return decorate


def training_options(
    model: type[BaseModel], names: Sequence[str] = ()
) -> Callable[[F], F]:
    """A training command's options: its own fields `names`, --config, then every
    shared training flag (TRAINING_FIELDS)."""
    return config_options(model, names, after=TRAINING_FIELDS)
