"""`timoe generate`."""

from __future__ import annotations

from pathlib import Path

import typer

from timoe_cli.common import ConfigOption, handles_errors, not_available


@handles_errors
def generate(config: Path | None = ConfigOption) -> None:
    """Sample text from a TiMoE bundle as of a query date."""
    not_available("generate")
