"""`timoe import`: the paper's GPTBase experts and transformers GPT-2 folders as run dirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timoe_cli.common import ConfigOption, console, handles_errors
from timoe_cli.options import config_options
from timoe_core.config import ImportConfig, resolve_config
from timoe_core.interop.importing import import_model

_FIELDS = ["format", "source", "slice", "data_cutoff", "kind", "out"]


@handles_errors
@config_options(ImportConfig, _FIELDS)
def import_(config: Path | None = ConfigOption, *, flags: dict[str, Any]) -> None:
    """Import a GPTBase or GPT-2 checkpoint as a timoe expert run dir."""
    cfg = resolve_config(ImportConfig, config, flags)
    run_dir = import_model(cfg)
    console.print(f"imported {cfg.source} ({cfg.format}) as the {cfg.kind} of {cfg.slice}: "
                  f"{run_dir}", highlight=False)
