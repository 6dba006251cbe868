"""`timoe compare`: several models or strategies on the same data, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timoe_cli.commands.evaluate import print_table, print_written, progress_bars
from timoe_cli.common import ConfigOption, handles_errors, print_warning
from timoe_cli.options import config_options
from timoe_core.config import EvaluateConfig, resolve_config
from timoe_core.evaluate.compare import compare_table
from timoe_core.evaluate.run import run_compare

_FIELDS = [
    "models", "data", "tsqa", "query_date", "policy", "answer_cutoffs", "json_out", "plot",
    "max_docs",
    "max_items", "batch_size", "tsqa_batch_size", "seq_len", "amp", "device",
]


@handles_errors
@config_options(EvaluateConfig, _FIELDS)
def compare(config: Path | None = ConfigOption, *, flags: dict[str, Any]) -> None:
    """Compare TiMoE strategies, single experts and dense baselines on the same data."""
    cfg = resolve_config(EvaluateConfig, config, flags)
    with progress_bars() as task:
        result = run_compare(cfg, task)
    when = f"as of {cfg.query_date}" if cfg.query_date else "each item as of its own date"
    print_table(f"comparison ({when})", *compare_table(result.report))
    for line in result.warnings:
        print_warning(line)
    print_written(result.written)
