"""`timoe evaluate` (alias `timoe eval`): perplexity per data year and temporal QA."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from timoe_cli.common import ConfigOption, console, err_console, handles_errors
from timoe_core.config import EvaluateConfig, resolve_config, save_config
from timoe_core.errors import TimoeError
from timoe_core.evaluate.compare import parse_entry
from timoe_core.evaluate.models import load_evaluated_model
from timoe_core.evaluate.perplexity import evaluate_perplexity, perplexity_matrix
from timoe_core.evaluate.report import (
    evaluation_report,
    is_json_report,
    is_png,
    matrix_table,
    perplexity_table,
    plot_report,
    summary_rows,
    tsqa_table,
    write_report,
)
from timoe_core.evaluate.tsqa import TSQAFields, load_tsqa, score_tsqa
from timoe_core.io import check_output_files, check_writable_dir
from timoe_core.lock import output_lock
from timoe_core.timeslices import parse_query_date


def tsqa_fields(cfg: EvaluateConfig) -> TSQAFields:
    return TSQAFields(
        question=cfg.tsqa_question_field, choices=cfg.tsqa_choices_field,
        answer=cfg.tsqa_answer_field, labels=cfg.tsqa_labels_field, year=cfg.tsqa_year_field,
        choice_text=cfg.tsqa_choice_text_field, choice_label=cfg.tsqa_choice_label_field,
    )


def check_outputs(cfg: EvaluateConfig) -> None:
    """Bad output paths are bad input, found before any work."""
    if cfg.plot is not None and cfg.plot.suffix.lower() != ".png":
        raise TimoeError(f"--plot {cfg.plot} must name a .png file")
    for flag, path in (("--json", cfg.json_out), ("--plot", cfg.plot)):
        if path is not None and path.is_dir():
            raise TimoeError(f"{flag} {path} is a folder: give a file name")
    inputs = {"--model": cfg.model, "--data": cfg.data}
    for i, entry in enumerate(cfg.models):
        inputs[f"--model #{i + 1}"] = parse_entry(entry)[0]
    check_output_files({"--json": cfg.json_out, "--plot": cfg.plot}, inputs,
                       {"--json": is_json_report, "--plot": is_png})
    for flag, path in (("--json", cfg.json_out), ("--plot", cfg.plot)):
        if path is not None:  # found now, not after the whole evaluation
            check_writable_dir(path.parent if path.exists() else path, flag)


@contextmanager
def progress_bars() -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """`task(description)` gives a `(done, total)` callback driving one rich bar."""
    with Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
        disable=not err_console.is_terminal,
    ) as bars:
        tasks: dict[str, int] = {}

        def task(description: str) -> Callable[[int, int], None]:
            def update(done: int, total: int) -> None:
                if description not in tasks:
                    tasks[description] = bars.add_task(description, total=total)
                bars.update(tasks[description], completed=done, total=total)

            return update

        yield task


def print_table(title: str, headers: list[str], rows: list[list[str]],
                numeric: bool = True) -> None:
    """Cells are plain text: paths and labels are never read as rich markup.

    numeric: every column but the first is right-aligned."""
    table = Table(title=Text(title), title_justify="left", header_style="bold",
                  show_header=any(headers))
    for i, h in enumerate(headers):
        table.add_column(Text(h), justify="right" if numeric and i else "left")
    for row in rows:
        table.add_row(*(Text(c) for c in row))
    console.print(table)


def write_outputs(cfg: EvaluateConfig, report: dict, plot: Callable[[Path, dict], None]) -> None:
    """JSON and PNG, each atomically and under its write lock; the resolved config beside
    the JSON (else the PNG)."""
    with ExitStack() as locks:
        for flag, path in (("--json", cfg.json_out), ("--plot", cfg.plot)):
            if path is not None:
                locks.enter_context(output_lock(path, flag))
        if cfg.json_out is not None:
            write_report(cfg.json_out, report, cfg)
            console.print(f"report: {cfg.json_out} (config: {cfg.json_out.stem}.config.yaml)")
        if cfg.plot is not None:
            plot(cfg.plot, report)
            if cfg.json_out is None:
                save_config(cfg, cfg.plot.parent, f"{cfg.plot.stem}.config.yaml")
            console.print(f"plot: {cfg.plot}")


@handles_errors
def evaluate(
    model: Path | None = typer.Option(
        None, "--model", help="TiMoE bundle, expert/dense run dir, or folder of expert run dirs."
    ),
    strategy: str | None = typer.Option(
        None, "--strategy", help="avg | learned-avg | coadapt | expert:YEAR | dense "
        "(default: the bundle's own)."
    ),
    query_date: str | None = typer.Option(
        None, "--query-date", help="Read everything as of DATE (YYYY, YYYY-MM or YYYY-MM-DD); "
        "default: each document's or question's own year."
    ),
    policy: str | None = typer.Option(None, "--policy", help="Eligibility: inclusive | strict."),
    data: Path | None = typer.Option(None, "--data", help="Prepared data dir: val perplexity."),
    tsqa: str | None = typer.Option(
        None, "--tsqa", help="Temporal QA: builtin | FILE.json/.jsonl | hf:NAME[:SPLIT]."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG plot."),
    matrix: bool | None = typer.Option(
        None, "--matrix/--no-matrix", help="Also a query date x data year perplexity matrix."
    ),
    max_docs: int | None = typer.Option(
        None, "--max-docs", help="At most N held-out windows per data year (fixed subsample)."
    ),
    max_items: int | None = typer.Option(None, "--max-items", help="At most N TSQA items."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Windows per forward."),
    tsqa_batch_size: int | None = typer.Option(
        None, "--tsqa-batch-size", help="TSQA items per forward (4 rows each)."
    ),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Window length in tokens."),
    amp: bool | None = typer.Option(None, "--amp/--no-amp", help="bf16 autocast (CUDA)."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda."),
    tsqa_question_field: str | None = typer.Option(None, "--tsqa-question-field"),
    tsqa_choices_field: str | None = typer.Option(None, "--tsqa-choices-field"),
    tsqa_answer_field: str | None = typer.Option(None, "--tsqa-answer-field"),
    tsqa_labels_field: str | None = typer.Option(None, "--tsqa-labels-field"),
    tsqa_year_field: str | None = typer.Option(None, "--tsqa-year-field"),
    config: Path | None = ConfigOption,
) -> None:
    """Perplexity per data year and temporal QA, as of a query date."""
    flags = dict(
        model=model, strategy=strategy, query_date=query_date, policy=policy, data=data,
        tsqa=tsqa, json_out=json_out, plot=plot, matrix=matrix, max_docs=max_docs,
        max_items=max_items, batch_size=batch_size, tsqa_batch_size=tsqa_batch_size,
        seq_len=seq_len, amp=amp, device=device, tsqa_question_field=tsqa_question_field,
        tsqa_choices_field=tsqa_choices_field, tsqa_answer_field=tsqa_answer_field,
        tsqa_labels_field=tsqa_labels_field, tsqa_year_field=tsqa_year_field,
    )
    # (resolve_config, not common.load_config: its first parameter is also called `model`)
    cfg = resolve_config(EvaluateConfig, config, flags)
    run_evaluate(cfg)


def run_evaluate(cfg: EvaluateConfig) -> dict:
    if cfg.model is None:
        raise TimoeError("--model is required: a TiMoE bundle, a run dir or a folder of runs")
    if cfg.data is None and cfg.tsqa is None:
        raise TimoeError("nothing to evaluate: give --data DATA_DIR and/or --tsqa SOURCE")
    if cfg.matrix and cfg.data is None:
        raise TimoeError("--matrix needs held-out text: give --data DATA_DIR")
    check_outputs(cfg)
    if cfg.query_date is not None:
        parse_query_date(cfg.query_date)

    m = load_evaluated_model(cfg.model, cfg.strategy, policy=cfg.policy, device=cfg.device,
                             amp=cfg.amp)
    if cfg.query_date is not None:
        m.eligible_experts(cfg.query_date)  # no expert that early: exit 2, naming the first date
    items = (load_tsqa(cfg.tsqa, fields=tsqa_fields(cfg), max_items=cfg.max_items)
             if cfg.tsqa else None)

    ppl = mat = qa = None
    with progress_bars() as task:
        if cfg.data is not None:
            common = dict(query_date=cfg.query_date, max_docs=cfg.max_docs,
                          batch_size=cfg.batch_size, seq_len=cfg.seq_len)
            if cfg.matrix:
                mat, ppl = perplexity_matrix(m, cfg.data, query_dates=cfg.matrix_query_dates,
                                             progress=task("perplexity matrix"), **common)
            else:
                ppl = evaluate_perplexity(m, cfg.data, progress=task("perplexity"), **common)
        if items is not None:
            qa = score_tsqa(m, items, query_date=cfg.query_date, batch_items=cfg.tsqa_batch_size,
                            progress=task("TSQA"))

    report = evaluation_report(m, model_path=cfg.model, query_date=cfg.query_date, perplexity=ppl,
                               tsqa=qa, matrix=mat, data_dir=cfg.data, tsqa_source=cfg.tsqa)
    print_table("evaluation", ["", ""], summary_rows(report), numeric=False)
    if ppl is not None:
        print_table("held-out perplexity by data year", *perplexity_table(report))
    if mat is not None:
        print_table("perplexity: query date (rows) x data year (columns)", *matrix_table(report))
    if qa is not None:
        title = f"temporal QA ({cfg.tsqa})"
        if qa.skipped:
            title += f" — {qa.skipped} items skipped: {qa.skipped_reason}"
        print_table(title, *tsqa_table(report))

    write_outputs(cfg, report, plot_report)
    return report
