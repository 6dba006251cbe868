"""`timoe train-router`."""

from __future__ import annotations

from pathlib import Path

import typer

from timoe_cli.common import ConfigOption, handles_errors, not_available


@handles_errors
def train_router(config: Path | None = ConfigOption) -> None:
    """Build a TiMoE bundle from expert run dirs; learned-avg trains the router."""
    not_available("train-router")
