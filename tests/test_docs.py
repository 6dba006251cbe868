"""The docs stay true to the code: the CLI reference lists every command and option."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import typer

from timoe_cli.main import app

ROOT = Path(__file__).resolve().parent.parent


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_from_the_current_cli():
    assert (ROOT / "docs" / "cli.md").read_text() == _gen_module().render(), (
        "docs/cli.md is out of date: run python scripts/gen_cli_docs.py"
    )


def test_every_command_and_option_appears_in_the_cli_reference():
    doc = (ROOT / "docs" / "cli.md").read_text()
    sections = dict(re.findall(r"^## `timoe ([a-z-]+)`[^\n]*\n(.*?)(?=^## |\Z)", doc, re.M | re.S))
    root = typer.main.get_command(app)
    visible = {n: c for n, c in root.commands.items() if not c.hidden}
    assert set(visible) == set(sections), "every visible command has its own section"
    assert {"prepare-data", "train-expert", "train-router", "coadapt", "evaluate", "generate",
            "demo"} <= set(visible)
    for name, cmd in visible.items():
        for param in cmd.params:
            if param.param_type_name != "option" or param.hidden:
                continue
            for opt in param.opts + param.secondary_opts:
                if opt.startswith("--"):
                    assert f"`{opt}" in sections[name] or f" {opt}`" in sections[name], (
                        f"timoe {name} {opt} is missing from docs/cli.md"
                    )
