"""`timoe prepare-data`."""

from __future__ import annotations

from pathlib import Path

import typer

from timoe_cli.common import ConfigOption, handles_errors, not_available


@handles_errors
def prepare_data(config: Path | None = ConfigOption) -> None:
    """Tokenise a dated corpus into per-year token files (manifest.json + uint16 .bin)."""
    not_available("prepare-data")
