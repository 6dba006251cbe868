"""Entry point: `timoe` and its subcommands, one module per command."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

from timoe_cli import restore_interrupt_handling
from timoe_core import __version__

if TYPE_CHECKING:  # checked against the typer the dev install brings (>= 0.20)
    from typer._click import exceptions as click_exceptions
else:
    try:  # typer >= 0.20 vendors its own click
        from typer._click import exceptions as click_exceptions
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exceptions

from timoe_cli.commands import (
    coadapt,
    compare,
    demo,
    evaluate,
    export,
    generate,
    import_model,
    prepare_data,
    train_expert,
    train_router,
)
from timoe_cli.common import console, err_console, error_line

app = typer.Typer(
    name="timoe",
    help="Time-aware mixtures of language experts: one GPT expert per time slice, "
    "combined without leaking the future.",
    no_args_is_help=True,
    add_completion=False,
    # Click's plain help: it wraps every option name in full at any width (Rich's table
    # cut `--router-hidden-dim` to `--router-hidden-d…` at 80 columns) and prints help
    # text as written (Rich markup took `timoe[eval]` for a tag and dropped it).
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _print_version(value: bool) -> None:
    if value:
        console.print(f"timoe {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Options of `timoe` itself (the app's help text is Typer's `help=` above)."""


app.command("prepare-data")(prepare_data.prepare_data)
app.command("train-expert")(train_expert.train_expert)
app.command("train-router")(train_router.train_router)
app.command("coadapt")(coadapt.coadapt)
app.command("evaluate")(evaluate.evaluate)
app.command("eval", hidden=True, help="Alias of `evaluate`.")(evaluate.evaluate)
app.command("compare")(compare.compare)
app.command("generate")(generate.generate)
app.command("demo")(demo.demo)
app.command("export")(export.export)
app.command("import")(import_model.import_)


def main() -> None:
    """Run the app; usage errors become one line on stderr with exit code 2."""
    restore_interrupt_handling()
    try:
        code = app(standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        sys.exit(0)
    except click_exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "timoe"
        err_console.print(
            error_line(f"{exc.format_message()} (see `{where} --help`)"), highlight=False
        )
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted", highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
