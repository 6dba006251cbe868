"""`timoe demo`."""

from __future__ import annotations

from pathlib import Path

from timoe_cli.common import ConfigOption, handles_errors, not_available


@handles_errors
def demo(config: Path | None = ConfigOption) -> None:
    """Run the whole pipeline on the built-in corpus and write a report."""
    not_available("demo")
