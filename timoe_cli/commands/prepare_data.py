"""`timoe prepare-data`: tokenise a dated corpus, or merge prepared shards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from timoe_cli.common import ConfigOption, console, err_console, handles_errors, load_config
from timoe_cli.options import config_options
from timoe_core.config import PrepareDataConfig
from timoe_core.config.fields import SCALE
from timoe_core.errors import TimoeError

if TYPE_CHECKING:
    from timoe_core.data.manifest import Manifest
    from timoe_core.data.progress import PrepareProgress

_FIELDS = [
    "source", "text_field", "date_field", "skip_bad_rows", "max_docs", "builtin_docs_per_year",
    "seed", "hf_split", "out", "overwrite", "seq_len", "val_fraction", "start_year", "end_year",
    "slice_years", "until", "workers", "num_shards", "shard_index",
]


@handles_errors
@config_options(PrepareDataConfig, _FIELDS)
def prepare_data(
    merge_dirs: list[Path] | None = typer.Argument(
        None,
        metavar="DATA_DIR",
        help="With --merge: the prepared data dirs (e.g. shard outputs) to merge into --out.",
        show_default=False,
    ),
    merge: bool = typer.Option(
        False,
        "--merge",
        help="Merge the DATA_DIRs given as arguments (shard outputs) into --out.",
        rich_help_panel=SCALE,
    ),
    config: Path | None = ConfigOption,
    *,
    flags: dict[str, Any],
) -> None:
    """Tokenise a dated corpus into per-year token files (manifest.json + uint16 .bin).

    Examples:

      timoe prepare-data --source builtin --out data/

      timoe prepare-data --source news.jsonl --date-field published --out data/

      timoe prepare-data --source corpus/ --num-shards 2 --shard-index 0 --out shard0/

      timoe prepare-data --merge shard0/ shard1/ --out data/
    """
    from timoe_core.data.prepare import prepare_data as run_prepare  # numpy: not for --help

    if merge_dirs and not merge:
        raise TimoeError(
            f"unexpected argument {str(merge_dirs[0])!r}: give the source with --source, "
            "or pass --merge to merge data dirs"
        )
    if merge and not merge_dirs:
        raise TimoeError("--merge needs the data dirs to merge: --merge DIR1 DIR2 ... --out DIR")
    cfg = load_config(PrepareDataConfig, config, **flags,
                      merge=merge_dirs if merge else None)
    what = "merging" if cfg.merge else "tokenising"
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        TextColumn("{task.fields[docs]:>12,} docs"),
        TextColumn("{task.fields[tokens]:>14,} tokens"),
        TextColumn("{task.fields[rate]:>8.2f} M tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
        transient=True,  # the summary table replaces it; an error leaves one line
    ) as progress:
        task = progress.add_task(what, total=None, docs=0, tokens=0, rate=0.0)

        def show(p: PrepareProgress) -> None:
            progress.update(
                task,
                completed=p.bytes_read or 0,
                total=p.total_bytes,
                docs=p.documents,
                tokens=p.tokens,
                rate=p.tokens_per_s / 1e6,
            )

        t0 = time.perf_counter()
        manifest = run_prepare(cfg, progress_callback=show)
        elapsed = time.perf_counter() - t0
    _print_summary(manifest, cfg, elapsed)


def _print_summary(manifest: Manifest, cfg: PrepareDataConfig, elapsed: float) -> None:
    slicing = manifest.time_slicing()
    table = Table(
        title=f"tokens per year in {cfg.out}",
        title_justify="left",
        caption=f"windows: train windows of seq_len + 1 = {manifest.seq_len + 1} tokens",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("year", justify="right")
    table.add_column("slice")
    for split in ("train", "val"):
        table.add_column(f"{split} docs", justify="right")
        table.add_column(f"{split} tokens", justify="right")
    table.add_column("windows", justify="right")
    totals = [0, 0, 0, 0]
    for y in sorted(manifest.years, key=int):
        s = manifest.years[y]
        row = [s.train.documents, s.train.tokens, s.val.documents, s.val.tokens]
        totals = [a + b for a, b in zip(totals, row)]
        label = slicing.slice_for_year(int(y)).label if slicing.contains_year(int(y)) else "-"
        windows = max(0, (s.train.tokens - 1) // manifest.seq_len)
        table.add_row(y, label, *(f"{v:,}" for v in row), f"{windows:,}")
    table.add_section()
    table.add_row("total", "", *(f"{v:,}" for v in totals), "", style="bold")
    console.print(table)
    skipped = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in manifest.skipped.items())
    console.print(f"skipped documents: {skipped or 'none'}")
    no_val = manifest.years_without_held_out_windows()
    if no_val:
        shown = ", ".join(map(str, no_val[:8])) + (", ..." if len(no_val) > 8 else "")
        console.print(
            f"note: {len(no_val)} of {len(manifest.years)} years have no held-out window of "
            f"{manifest.seq_len + 1} tokens ({shown}): evaluate reports no perplexity for "
            f"them; raise --val-fraction (now {manifest.val_fraction:g}) or add text"
        )
    n_bytes = sum(e.bytes for e in manifest.files.values())
    tokens = totals[1] + totals[3]
    rate = tokens / elapsed / 1e6 if elapsed > 0 else 0.0
    console.print(
        f"wrote {cfg.out}: {len(manifest.files)} token files, {n_bytes / 2**20:,.1f} MiB, "
        f"in {elapsed:.1f} s ({rate:.2f} M tokens/s)"
    )
