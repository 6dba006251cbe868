"""`timoe train-expert`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from timoe_cli.common import (
    ConfigOption,
    console,
    handles_errors,
    load_config,
    run_training_command,
    training_summary,
)
from timoe_cli.options import training_options

_MODEL = "Model"


@handles_errors
@training_options
def train_expert(
    year: Annotated[
        int | None, typer.Option(help="Train the expert of the slice containing this year.")
    ] = None,
    all_years: Annotated[
        bool | None, typer.Option("--all-years", help="Train one dense model on every slice.")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="tiny | small | gpt2-124m (default tiny).", rich_help_panel=_MODEL),
    ] = None,
    n_layer: Annotated[
        int | None, typer.Option(help="Override the preset's layers.", rich_help_panel=_MODEL)
    ] = None,
    n_head: Annotated[
        int | None, typer.Option(help="Override the preset's heads.", rich_help_panel=_MODEL)
    ] = None,
    n_embd: Annotated[
        int | None, typer.Option(help="Override the preset's width.", rich_help_panel=_MODEL)
    ] = None,
    seq_len: Annotated[
        int | None,
        typer.Option(help="Override the preset's context length.", rich_help_panel=_MODEL),
    ] = None,
    dropout: Annotated[
        float | None, typer.Option(help="Override the preset's dropout.", rich_help_panel=_MODEL)
    ] = None,
    config: Path | None = ConfigOption,
    *,
    training: dict[str, Any],
) -> None:
    """Train the GPT expert of one time slice (--year), or a dense model on all years."""
    from timoe_core.config import TrainExpertConfig
    from timoe_core.train.expert import train_expert as run

    cfg = load_config(
        TrainExpertConfig,
        config,
        year=year,
        all_years=all_years,
        preset=preset,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        seq_len=seq_len,
        dropout=dropout,
        **training,
    )
    run_dir = run_training_command(run, cfg)
    if run_dir is not None:
        console.print(f"trained {run_dir} ({training_summary(run_dir)})", highlight=False,
                      soft_wrap=True)
