"""`timoe evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer

from timoe_cli.common import ConfigOption, handles_errors, not_available


@handles_errors
def evaluate(config: Path | None = ConfigOption) -> None:
    """Perplexity per data year and temporal QA, as of a query date."""
    not_available("evaluate")
