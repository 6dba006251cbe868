"""What every command shares: consoles, the error contract, and config resolution.

Errors: a TimoeError (bad input) prints one line on stderr and exits 2; Ctrl-C exits
130 with a line; anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from timoe_core.config import resolve_config
from timoe_core.errors import TimoeError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)

ConfigOption = typer.Option(
    None, "--config", help="YAML or TOML file of options; flags given on the line override it."
)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on stderr and exit (2 = bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


def handles_errors(fn: F) -> F:
    """Wrap a command so bad input becomes one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TimoeError as exc:
            fail(str(exc).replace("\n", " "))
        except KeyboardInterrupt:
            err_console.print("interrupted: rerun the same command to resume", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def load_config(model: type[M], config_file: Path | None, **flags: Any) -> M:
    """Config file values with every given flag on top, validated (TimoeError on failure)."""
    return resolve_config(model, config_file, flags)


def not_available(command: str) -> NoReturn:
    fail(f"`timoe {command}` is not available yet in this version")


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
