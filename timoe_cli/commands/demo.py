"""`timoe demo`: the whole pipeline on the built-in corpus, one command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text

from timoe_cli.commands.evaluate import print_table, progress_bars
from timoe_cli.common import ConfigOption, console, handles_errors, load_config
from timoe_cli.options import config_options
from timoe_core.config import DemoConfig
from timoe_core.demo import (
    PERPLEXITY_PLOT_FILENAME,
    QA_PLOT_FILENAME,
    REPORT_FILENAME,
    Stage,
    disk_plan,
    run_demo,
    stale_table,
)
from timoe_core.evaluate import compare_table


@handles_errors
@config_options(DemoConfig, ["out", "quick", "cutoff_every", "seed", "device", "overwrite",
                            "keep_checkpoints"])
def demo(config: Path | None = ConfigOption, *, flags: dict[str, Any]) -> None:
    """Run the whole pipeline on the built-in corpus: data, experts, dense baseline,
    routers, coadapt, evaluation, report. A rerun resumes where the last one stopped."""
    cfg = load_config(DemoConfig, config, **flags)

    def on_stage(index: int, total: int, stage: Stage, skipped: bool) -> None:
        note = ("  (done, skipped)", "dim") if skipped else ""
        # a plain line wraps on a narrow terminal; a Rule title would be cut short
        console.print(Text.assemble((f"[{index}/{total}]", "bold cyan"), " ",
                                    stage.description, note), highlight=False)

    console.print(disk_plan(cfg).line(cfg.out) + (
        "" if cfg.keep_checkpoints else " (finished stages' trainer checkpoints are removed; "
        "--keep-checkpoints keeps them)"), highlight=False, soft_wrap=True)
    with progress_bars() as task:
        report = run_demo(cfg, on_stage, lambda d, done, tot: task(d)(done, tot))
    result = report["comparison"]
    note = report.get("note")
    if note:
        console.print(Text(f"note: {note}", style="bold yellow"))
    print_table("TiMoE vs baselines (held-out perplexity; temporal QA, each question as of "
                "its own year; 95% intervals)", *compare_table(result, per_year=False))
    head = report["headline"]
    for label, d in head.get("future_error_differences", {}).items():
        lo, hi = d["interval"]
        console.print(f"future-error rate, dense (all years) minus {label}: "
                      f"{100 * d['difference']:+.1f} points [95% CI {100 * lo:+.1f}, "
                      f"{100 * hi:+.1f}]", highlight=False)
    if head.get("claim"):
        console.print(head["claim"], highlight=False)
    stale = report.get("stale_by_cutoffs")
    if stale and stale["models"]:
        print_table("stale answers: questions asked in the months after their answer changed "
                    f"that year ({stale['items']}), answered from year-end and from month-end "
                    "artefacts (95% intervals)", *stale_table(stale))
        if stale.get("claim"):
            console.print(stale["claim"], highlight=False)
        if stale.get("note"):
            console.print(f"note: {stale['note']}", highlight=False)
    if note:
        console.print(Text(f"note: {note}", style="bold yellow"))
    console.print(f"report: {cfg.out / REPORT_FILENAME}; plots: {cfg.out / QA_PLOT_FILENAME}, "
                  f"{cfg.out / PERPLEXITY_PLOT_FILENAME} ({report['total_seconds']:.0f} s of "
                  "stages)", highlight=False, soft_wrap=True)
