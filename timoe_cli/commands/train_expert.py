"""`timoe train-expert`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timoe_cli.common import (
    ConfigOption,
    console,
    handles_errors,
    load_config,
    run_training_command,
    training_summary,
)
from timoe_cli.options import training_options
from timoe_core.config import TrainExpertConfig


@handles_errors
@training_options(
    TrainExpertConfig,
    ["year", "all_years", "base", "until", "init_from", "init_optimizer", "init_cutoff",
     "snapshots", "snapshot_kind", "snapshot_average_fraction", "snapshot_dtype", "preset",
     "n_layer", "n_head", "n_embd", "seq_len", "dropout"],
)
def train_expert(config: Path | None = ConfigOption, *, flags: dict[str, Any]) -> None:
    """Train the GPT expert of one time slice (--year), a dense model on all years, or a base
    model on the years up to a date (--base --until); --init-from starts from other weights."""
    from timoe_core.train.expert import train_expert as run

    cfg = load_config(TrainExpertConfig, config, **flags)
    run_dir = run_training_command(run, cfg)
    if run_dir is not None:
        console.print(f"trained {run_dir} ({training_summary(run_dir)})", highlight=False,
                      soft_wrap=True)
