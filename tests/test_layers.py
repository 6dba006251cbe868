"""The layer order (pyproject.toml, [tool.importlinter]) is kept, covers every module, and
catches an upward import: a function-level one included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

import timoe_core

ROOT = Path(__file__).resolve().parent.parent
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
        "lint_imports_command()"]


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = config["tool"]["importlinter"]["contracts"]
    assert contract["type"] == "layers"
    return contract["layers"]


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(LINT, cwd=root, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_every_module_of_timoe_core_is_in_a_layer():
    named = {m.strip() for layer in _layers() for m in layer.replace(":", "|").split("|")}
    package = Path(timoe_core.__file__).parent
    top = {f"timoe_core.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    top |= {f"timoe_core.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert top - named == set(), "a module outside every layer could import anything"
    assert "timoe_cli" in named


def test_the_layers_contract_is_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_inside_a_function_breaks_the_contract(tmp_path):
    for name in ("timoe_core", "timoe_cli"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert _lint(tmp_path).returncode == 0  # the copy as it is: kept
    gpt = tmp_path / "timoe_core" / "model" / "gpt.py"
    gpt.write_text(gpt.read_text(encoding="utf-8") + (
        "\n\ndef _peek_at_training():\n"
        "    from timoe_core.train import loop\n\n"
        "    return loop\n"
    ), encoding="utf-8")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "timoe_core.model is not allowed to import timoe_core.train" in result.stdout
    assert "timoe_core.model.gpt -> timoe_core.train.loop" in result.stdout


MAX_MODULE_LINES = 400


def test_no_module_of_timoe_core_is_over_400_lines():
    """A module does one job: past 400 lines it is doing several (split it by job)."""
    package = Path(timoe_core.__file__).parent
    sizes = {str(p.relative_to(package)): len(p.read_text(encoding="utf-8").splitlines())
             for p in package.rglob("*.py")}
    assert len(sizes) > 50
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}
