"""What every command shares: consoles, the error contract, and config resolution.

Errors: a TimoeError (bad input) prints one line on stderr and exits 2; Ctrl-C exits
130 with a line; anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.text import Text

from timoe_core.config import resolve_config
from timoe_core.errors import TimoeError

# markup and emoji off: every printed string may hold user text (a path with `[/]` or
# `[bold]`, `hf:a:b:c`), which must be printed as it is; styles go through Text/style=.
console = Console(markup=False, emoji=False)
err_console = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)


def error_line(message: str) -> Text:
    """`error: MESSAGE` with the prefix in bold red and the message printed verbatim."""
    return Text.assemble(("error:", "bold red"), " ", message)

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)

ConfigOption = typer.Option(
    None, "--config", help="YAML or TOML file of options; flags given on the line override it."
)


def print_warning(message: str) -> None:
    """`warning: MESSAGE` on stderr, one line, the message verbatim."""
    err_console.print(Text.assemble(("warning:", "bold yellow"), " ", message), highlight=False)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on stderr and exit (2 = bad input)."""
    err_console.print(error_line(message), highlight=False)
    raise typer.Exit(code)


def handles_errors(fn: F) -> F:
    """Wrap a command so bad input becomes one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TimoeError as exc:
            fail(str(exc).replace("\n", " "))
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise  # anything else is a bug: keep its traceback
            fail(describe_os_error(exc))
        except KeyboardInterrupt:
            err_console.print(interrupted_line(fn.__name__), highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# Commands that pick up where a killed run stopped; the others start over when rerun.
_RESUMABLE_COMMANDS = {"train_expert", "train_router", "coadapt", "demo"}


def interrupted_line(command: str) -> str:
    """What Ctrl-C prints: only the commands that can resume promise it."""
    if command in _RESUMABLE_COMMANDS:
        return "interrupted: rerun the same command to resume"
    return "interrupted: nothing was written; rerun the command to start it again"


# OS errors that are the machine's state, not a bug: one line and exit 2 wherever they
# surface (commands check their outputs up front; this is the net behind those checks).
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def describe_os_error(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space and rerun (training commands resume from their last checkpoint)"
    else:
        fix = "fix the permissions or choose another path"
    return f"{exc.strerror or exc}{where}: {fix}"


def load_config(model: type[M], config_file: Path | None, **flags: Any) -> M:
    """Config file values with every given flag on top, validated (TimoeError on failure)."""
    return resolve_config(model, config_file, flags)


def not_available(command: str) -> NoReturn:
    fail(f"`timoe {command}` is not available yet in this version")


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def run_training_command(train: Callable[[M], Path], cfg: M) -> Path | None:
    """Run a training library function the way every training command does: Ctrl-C
    exits 130 with how to resume, a failed worker exits with its code; returns the
    output dir, or None on a rank other than 0 under torchrun/srun (rank 0 reports)."""
    from timoe_core.train.distributed import TrainingInterrupted, WorkersFailed, outer_launch

    try:
        out = train(cfg)
    except TrainingInterrupted as exc:
        err_console.print(exc.message, highlight=False)
        raise typer.Exit(130) from None
    except WorkersFailed as exc:
        if exc.code != 2:  # exit 2: the worker already printed its one line
            err_console.print(error_line(str(exc)), highlight=False)
        raise typer.Exit(exc.code) from None
    outer = outer_launch()
    if outer is not None and outer.rank != 0:
        return None
    return out


def training_summary(run_dir: Path) -> str:
    """'step N, loss X, eval loss Y' from a run dir's metrics.jsonl; for a staged router
    (OUT/stages/<date>/metrics.jsonl) 'K stages, N steps in all, last stage: ...'."""
    from timoe_core.train.metrics import read_metrics

    stages = sorted(p.parent for p in Path(run_dir).glob("stages/*/metrics.jsonl"))
    if stages and not (Path(run_dir) / "metrics.jsonl").is_file():
        runs = [[r for r in read_metrics(d) if r.get("type") == "train"] for d in stages]
        trained = [(d, t) for d, t in zip(stages, runs) if t]
        if not trained:
            return "no stage had windows to train on"
        steps = sum(t[-1]["step"] for _, t in trained)
        return (f"{len(trained)} stages, {steps} steps in all; last stage "
                f"{trained[-1][0].name}: {training_summary(trained[-1][0])}")
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    summary = f"step {train[-1]['step']}, loss {train[-1]['loss']:.4f}" if train else "no steps"
    if evals:
        summary += f", eval loss {evals[-1]['eval_loss']:.4f}"
    return summary
