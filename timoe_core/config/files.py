"""Config files: read a YAML/TOML file of options, lay the flags over it, validate
(`resolve_config`), and save the resolved config beside an output (`save_config`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from timoe_core.errors import TimoeError, first_line
from timoe_core.io import atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # the standard library's TOML reader came in 3.11; tomli is the same reader before it
    import tomli as tomllib

CONFIG_FILENAME = "config.yaml"
# A config file is a few lines; anything this large is a mistake or an attack.
MAX_CONFIG_BYTES = 1 << 20

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
        raise TimoeError(f"config file {path} is not valid: {first_line(exc)}") from None
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
