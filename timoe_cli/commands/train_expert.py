"""`timoe train-expert`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from timoe_cli.common import ConfigOption, console, err_console, handles_errors, load_config
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
    from timoe_core.train.distributed import TrainingInterrupted, WorkersFailed, outer_launch
    from timoe_core.train.expert import train_expert as run
    from timoe_core.train.metrics import read_metrics

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
    try:
        run_dir = run(cfg)
    except TrainingInterrupted as exc:
        err_console.print(exc.message, highlight=False)
        raise typer.Exit(130) from None
    except WorkersFailed as exc:
        if exc.code != 2:  # exit 2: the worker already printed its one line
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(exc.code) from None
    outer = outer_launch()
    if outer is not None and outer.rank != 0:
        return  # under torchrun/srun every rank runs this command: rank 0 reports
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    summary = f"step {train[-1]['step']}, loss {train[-1]['loss']:.4f}" if train else "no new steps"
    if evals:
        summary += f", eval loss {evals[-1]['eval_loss']:.4f}"
    console.print(f"trained {run_dir} ({summary})", highlight=False, soft_wrap=True)
