"""`timoe compare`: several models or strategies on the same data, side by side."""

from __future__ import annotations

from pathlib import Path

import typer

from timoe_cli.commands.evaluate import (
    check_outputs,
    print_table,
    progress_bars,
    tsqa_fields,
    write_outputs,
)
from timoe_cli.common import ConfigOption, handles_errors
from timoe_core.config import EvaluateConfig, resolve_config
from timoe_core.errors import TimoeError
from timoe_core.evaluate.compare import compare_models, compare_table
from timoe_core.evaluate.report import plot_compare
from timoe_core.timeslices import parse_query_date


@handles_errors
def compare(
    models: list[str] | None = typer.Option(
        None, "--model", help="PATH or PATH:STRATEGY, repeated: a bundle (runs/timoe, "
        "runs/timoe:learned-avg, runs/timoe:expert:2016), a dense run dir, a folder of runs."
    ),
    data: Path | None = typer.Option(None, "--data", help="Prepared data dir: val perplexity."),
    tsqa: str | None = typer.Option(
        None, "--tsqa", help="Temporal QA: builtin | FILE.json/.jsonl | hf:NAME[:SPLIT]."
    ),
    query_date: str | None = typer.Option(
        None, "--query-date", help="Read everything as of DATE; default: each item's own year."
    ),
    policy: str | None = typer.Option(None, "--policy", help="Eligibility: inclusive | strict."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the comparison as JSON."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG: QA bars, perplexity."),
    max_docs: int | None = typer.Option(None, "--max-docs", help="Windows per data year."),
    max_items: int | None = typer.Option(None, "--max-items", help="At most N TSQA items."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Windows per forward."),
    tsqa_batch_size: int | None = typer.Option(None, "--tsqa-batch-size"),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Window length in tokens."),
    amp: bool | None = typer.Option(None, "--amp/--no-amp", help="bf16 autocast (CUDA)."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda."),
    config: Path | None = ConfigOption,
) -> None:
    """Compare TiMoE strategies, single experts and dense baselines on the same data."""
    flags = dict(
        models=models or None, data=data, tsqa=tsqa, query_date=query_date, policy=policy,
        json_out=json_out, plot=plot, max_docs=max_docs, max_items=max_items,
        batch_size=batch_size, tsqa_batch_size=tsqa_batch_size, seq_len=seq_len, amp=amp,
        device=device,
    )
    cfg = resolve_config(EvaluateConfig, config, flags)
    if not cfg.models:
        raise TimoeError("give at least one --model PATH[:STRATEGY] (repeat it to compare)")
    check_outputs(cfg)
    if cfg.query_date is not None:
        parse_query_date(cfg.query_date)
    with progress_bars() as task:
        result = compare_models(
            cfg.models, cfg.data, cfg.tsqa, query_date=cfg.query_date, policy=cfg.policy,
            max_docs=cfg.max_docs, max_items=cfg.max_items, batch_size=cfg.batch_size,
            tsqa_batch_items=cfg.tsqa_batch_size, seq_len=cfg.seq_len, fields=tsqa_fields(cfg),
            device=cfg.device, amp=cfg.amp, progress=lambda d, done, tot: task(d)(done, tot),
        )
    when = f"as of {cfg.query_date}" if cfg.query_date else "each item as of its own year"
    print_table(f"comparison ({when})", *compare_table(result))
    write_outputs(cfg, result, plot_compare)
