"""The `timoe` command line: parse, validate, call timoe_core, print. No logic lives here."""

import os as _os
import signal as _signal
import sys as _sys


def _interrupted_while_starting(signum: int, frame: object) -> None:
    # Ctrl-C during the second or so of imports (torch, typer...): nothing has started,
    # so exit 130 with one line instead of a KeyboardInterrupt traceback from an import.
    _os.write(2, b"interrupted\n")
    _os._exit(130)


def _started_as_the_cli() -> bool:
    argv0 = _sys.argv[0] if _sys.argv else ""
    return (
        _os.path.basename(argv0) == "timoe"
        or argv0 == "-m"  # python -m timoe_cli, while the package is being imported
        or argv0.replace("\\", "/").endswith("timoe_cli/__main__.py")
    )


if _started_as_the_cli():  # only the entry point: never inside a library user's process
    _signal.signal(_signal.SIGINT, _interrupted_while_starting)


def restore_interrupt_handling() -> None:
    """Back to Python's KeyboardInterrupt once the imports are done (commands checkpoint
    and exit 130 on it)."""
    if _signal.getsignal(_signal.SIGINT) is _interrupted_while_starting:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
