"""`timoe import`: the paper's GPTBase experts and transformers GPT-2 folders as run dirs."""

from __future__ import annotations

from pathlib import Path

import typer

from timoe_cli.common import ConfigOption, console, handles_errors
from timoe_core.config import ImportConfig, resolve_config
from timoe_core.interop.importing import import_model


@handles_errors
def import_(
    format: str | None = typer.Option(
        None, "--format", help="gptbase: the paper code's GPTBase folder (config.json + "
        "weights); hf: a transformers GPT2LMHeadModel folder."
    ),
    source: str | None = typer.Option(
        None, "--source", help="The folder to read, or hf:ORG/NAME[@REVISION]."
    ),
    slice: str | None = typer.Option(
        None, "--slice", help="The years the model was trained on, e.g. 2015-2016."
    ),
    data_cutoff: str | None = typer.Option(
        None, "--data-cutoff", help="Latest date of any text it saw, YYYY[-MM[-DD]] "
        "(default: the slice's last day)."
    ),
    kind: str | None = typer.Option(None, "--kind", help="expert (default) or dense."),
    out: Path | None = typer.Option(None, "--out", help="Run dir to write (new or empty)."),
    config: Path | None = ConfigOption,
) -> None:
    """Import a GPTBase or GPT-2 checkpoint as a timoe expert run dir."""
    flags = dict(format=format, source=source, slice=slice, data_cutoff=data_cutoff, kind=kind,
                 out=out)
    cfg = resolve_config(ImportConfig, config, flags)
    run_dir = import_model(cfg)
    console.print(f"imported {cfg.source} ({cfg.format}) as the {cfg.kind} of {cfg.slice}: "
                  f"{run_dir}", highlight=False)
