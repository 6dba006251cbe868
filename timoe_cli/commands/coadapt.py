"""`timoe coadapt`."""

from __future__ import annotations

from pathlib import Path

from timoe_cli.common import ConfigOption, handles_errors, not_available


@handles_errors
def coadapt(config: Path | None = ConfigOption) -> None:
    """Train the router together with each batch's own slice expert."""
    not_available("coadapt")
