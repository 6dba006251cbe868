"""`timoe evaluate` (alias `timoe eval`): perplexity per data year and temporal QA."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from timoe_cli.common import ConfigOption, console, err_console, handles_errors, print_warning
from timoe_cli.options import config_options
from timoe_core.config import EvaluateConfig, resolve_config
from timoe_core.evaluate.report import matrix_table, perplexity_table, summary_rows, tsqa_table
from timoe_core.evaluate.run import run_evaluate


@contextmanager
def progress_bars() -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """`task(description)` gives a `(done, total)` callback driving one rich bar."""
    with Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
        disable=not err_console.is_terminal,
    ) as bars:
        tasks: dict[str, TaskID] = {}

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
    for i, h in enumerate(headers):  # fold, never "…": a cut label or figure misleads
        table.add_column(Text(h), justify="right" if numeric and i else "left", overflow="fold")
    for row in rows:
        table.add_row(*(Text(c) for c in row))
    console.print(table)


def print_written(written: list[tuple[str, Path]]) -> None:
    for kind, path in written:
        if kind == "report":
            console.print(f"report: {path} (config: {path.stem}.config.yaml)")
        else:
            console.print(f"plot: {path}")


_FIELDS = [
    "model", "strategy", "query_date", "policy", "answer_cutoffs", "data", "tsqa", "json_out",
    "plot", "matrix",
    "max_docs", "max_items", "batch_size", "tsqa_batch_size", "seq_len", "amp", "device",
    "tsqa_question_field", "tsqa_choices_field", "tsqa_answer_field", "tsqa_labels_field",
    "tsqa_year_field", "tsqa_schema", "tsqa_field", "tsqa_label", "lm_eval_tasks",
    "lm_eval_include_path", "lm_eval_limit", "lm_eval_date_field",
]


@handles_errors
@config_options(EvaluateConfig, _FIELDS)
def evaluate(config: Path | None = ConfigOption, *, flags: dict[str, Any]) -> None:
    """Perplexity per data year and temporal QA, as of a query date."""
    cfg = resolve_config(EvaluateConfig, config, flags)
    with progress_bars() as task:
        result = run_evaluate(cfg, task, warn=print_warning)
    report, qa = result.report, result.tsqa
    print_table("evaluation", ["", ""], summary_rows(report), numeric=False)
    if result.perplexity is not None:
        print_table("held-out perplexity by data year", *perplexity_table(report))
    if result.matrix is not None:
        print_table("perplexity: query date (rows) x data year (columns)", *matrix_table(report))
    if qa is not None:
        title = f"temporal QA ({cfg.tsqa})"
        if qa.skipped:
            title += f" — {qa.skipped} items skipped: {qa.skipped_reason}"
        print_table(title, *tsqa_table(report))
    if "lm_eval" in report:
        from timoe_core.evaluate.harness import lm_eval_table

        print_table("lm-evaluation-harness", *lm_eval_table(report["lm_eval"]))
    print_written(result.written)
