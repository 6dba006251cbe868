"""What every config model is built from: the strict base model, the field types and
help panels the commands share, and the rule that an option with no effect is refused."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict


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


def parse_assignments(items: Mapping[object, object] | Iterable[object] | None) -> dict[str, str]:
    """['a=b', 'c=d'] (flags) or {'a': 'b'} (a config file) -> {'a': 'b', 'c': 'd'}.

    Raises ValueError (pydantic names the field) for an item without NAME=VALUE."""
    if not items:
        return {}
    if isinstance(items, Mapping):
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


# Set while a config a run recorded is read back (`reading_recorded_config`).
_READING_RECORDED: ContextVar[bool] = ContextVar("reading_recorded", default=False)


@contextmanager
def reading_recorded_config() -> Iterator[None]:
    """Within it, `refuse_ignored` refuses nothing: a run's config.yaml records every
    option, and one without effect there may hold the default of an earlier version
    (a --snapshots none run's `cutoff_every: year`). It names what the run did, not
    what a user typed."""
    token = _READING_RECORDED.set(True)
    try:
        yield
    finally:
        _READING_RECORDED.reset(token)


def refuse_ignored(model: BaseModel, rules: dict[str, tuple[bool, str]]) -> None:
    """ValueError naming the first option set (to other than its default) that would have
    no effect: rules[field] = (it takes effect, when it would). Every option either takes
    effect or is refused; none is ignored silently."""
    if _READING_RECORDED.get():
        return
    for name, (effective, when) in rules.items():
        default = type(model).model_fields[name].get_default(call_default_factory=True)
        if not effective and getattr(model, name) != default:
            raise ValueError(
                f"{flag_name(type(model), name)} has no effect here: it applies {when}; "
                "leave it out"
            )

