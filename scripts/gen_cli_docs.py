"""Write docs/cli.md from the Typer app itself, so the reference never drifts from --help.

    python scripts/gen_cli_docs.py            # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check    # exit 1 if docs/cli.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from timoe_cli.main import app

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

HEADER = """# Command-line reference

Generated from the CLI by `python scripts/gen_cli_docs.py`; a test fails when it is out
of date. Every command also takes `--config FILE` (YAML or TOML): its keys are the
option names with `_` for `-` (`max_steps: 200`), and flags given on the line override
them. The resolved config is saved beside every output, so a run can be repeated with
`--config RUN_DIR/config.yaml`.

Exit codes: 0 success; 2 bad input or usage (one line on stderr, nothing written);
130 interrupted (a checkpoint was written: rerun the same command to resume); 1 a bug.
"""


def _option_row(param) -> str:  # a click Option (typer may vendor its own click)
    names = " / ".join(param.opts + param.secondary_opts)
    help_text = (getattr(param, "help", None) or "").replace("|", "\\|").replace("\n", " ")
    default = param.default
    if isinstance(getattr(param, "show_default", None), str):  # the config field's default
        default = param.show_default
    shown = "" if default is None or callable(default) or default == [] else f"`{default}`"
    return f"| `{names}` | {help_text} | {shown} |"


def render() -> str:
    root = typer.main.get_command(app)
    parts = [HEADER]
    for name, cmd in sorted(root.commands.items()):
        if cmd.hidden:
            continue
        aliases = [n for n, c in root.commands.items() if c.hidden and c.callback is cmd.callback]
        title = f"## `timoe {name}`" + (f" (alias: `{', '.join(aliases)}`)" if aliases else "")
        parts.append(title)
        parts.append((cmd.help or "").strip())
        options = [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]
        if options:
            parts.append("| option | meaning | default |\n| --- | --- | --- |\n"
                         + "\n".join(_option_row(p) for p in options))
    return "\n\n".join(parts) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
