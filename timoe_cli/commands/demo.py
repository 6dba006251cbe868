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
    run_demo,
)
from timoe_core.evaluate import compare_table
from timoe_core.evaluate.report import pct


@handles_errors
@config_options(DemoConfig, ["out", "quick", "seed", "device", "overwrite"])
def demo(config: Path | None = ConfigOption, *, flags: dict[str, Any]) -> None:
    """Run the whole pipeline on the built-in corpus: data, experts, dense baseline,
    routers, coadapt, evaluation, report. A rerun resumes where the last one stopped."""
    cfg = load_config(DemoConfig, config, **flags)

    def on_stage(index: int, total: int, stage: Stage, skipped: bool) -> None:
        note = ("  (done, skipped)", "dim") if skipped else ""
        # a plain line wraps on a narrow terminal; a Rule title would be cut short
        console.print(Text.assemble((f"[{index}/{total}]", "bold cyan"), " ",
                                    stage.description, note), highlight=False)

    with progress_bars() as task:
        report = run_demo(cfg, on_stage, lambda d, done, tot: task(d)(done, tot))
    result = report["comparison"]
    print_table("TiMoE vs baselines (held-out perplexity; temporal QA, each question as of "
                "its own year)", *compare_table(result))
    head = report["headline"]
    dense = next((v for k, v in head["models"].items() if k.startswith("dense (all")), None)
    for label, row in head["models"].items():
        if dense is not None and not label.startswith("dense (all"):
            console.print(f"{label}: future-error rate {pct(row['future_error'])} "
                          f"vs dense (all years) {pct(dense['future_error'])}", highlight=False)
    verdict = head["timoe_leaks_less_than_dense"]
    if verdict is not None:
        console.print("every TiMoE strategy leaks fewer future answers than the dense model"
                      if verdict else "not every TiMoE strategy leaks fewer future answers "
                      "than the dense model in this run", highlight=False)
    console.print(f"report: {cfg.out / REPORT_FILENAME}; plots: {cfg.out / QA_PLOT_FILENAME}, "
                  f"{cfg.out / PERPLEXITY_PLOT_FILENAME} ({report['total_seconds']:.0f} s of "
                  "stages)", highlight=False, soft_wrap=True)
