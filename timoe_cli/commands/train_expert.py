"""`timoe train-expert`."""

from __future__ import annotations

from pathlib import Path

import typer

from timoe_cli.common import ConfigOption, handles_errors, not_available


@handles_errors
def train_expert(config: Path | None = ConfigOption) -> None:
    """Train the GPT expert of one time slice (--year) or a dense model on all years (--all-years)."""
    not_available("train-expert")
