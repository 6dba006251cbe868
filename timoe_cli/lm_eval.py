"""`timoe-lm-eval`: lm-evaluation-harness's command line with the `timoe` model registered
(lm-eval has no hook through which an installed package adds a model to `lm_eval`)."""

from __future__ import annotations

import sys

from timoe_cli.common import err_console, error_line
from timoe_core.errors import TimoeError


def main() -> None:
    from timoe_core.evaluate.harness import run_lm_eval_cli

    try:
        run_lm_eval_cli()
    except TimoeError as exc:
        err_console.print(error_line(str(exc)), highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
