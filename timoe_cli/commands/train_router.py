"""`timoe train-router`: a TiMoE bundle; `--strategy avg` writes it, learned-avg trains a router."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from timoe_cli.common import (
    ConfigOption,
    console,
    handles_errors,
    load_config,
    run_training_command,
    training_summary,
)
from timoe_cli.options import MIXTURE_FIELDS, training_options
from timoe_core.config import TrainRouterConfig
from timoe_core.model.mixture import TiMoE

_OWN = ["strategy", "experts", *MIXTURE_FIELDS[:3], "cache_log_probs", *MIXTURE_FIELDS[3:],
        "keep_stage_checkpoints", "snapshot_dtype"]


@handles_errors
@training_options(TrainRouterConfig, _OWN)
def train_router(config: Path | None = ConfigOption, *, flags: dict[str, Any]) -> None:
    """Build a TiMoE bundle from expert run dirs; learned-avg trains its router."""
    from timoe_core.recipes import train_router as run

    cfg = load_config(TrainRouterConfig, config, **flags)
    cfg.refuse_training_options_for_avg()
    out = run_training_command(run, cfg)
    if out is None:
        return
    if cfg.strategy != "avg":
        console.print(f"trained {out} ({training_summary(out)})", highlight=False, soft_wrap=True)
    print_bundle(TiMoE.from_bundle(out), out)


def print_bundle(mix: TiMoE, out: Path) -> None:
    table = Table(
        title=Text(f"TiMoE bundle {out} ({mix.strategy}, policy {mix.policy})"),
        title_justify="left",
        header_style="bold",
    )
    for header in ("slice", "expert weights", "weights sha256"):
        table.add_column(header)
    sha = mix.expert_checksums
    for label, directory in mix.expert_dirs.items():
        table.add_row(Text(label), Text(str(directory)), Text((sha[label] or "")[:16]))
    console.print(table)
    gaps = mix.uncovered_years()
    if gaps:
        console.print(f"no expert for {', '.join(gaps)}: those years are never covered")
    # by the artefacts' cutoffs (a slice's snapshot answers before its final expert)
    console.print(f"first usable query date: {mix.first_usable_date().isoformat()}")
