"""`timoe export`: timoe experts as transformers GPT2LMHeadModel folders."""

from __future__ import annotations

from pathlib import Path

import typer

from timoe_cli.common import ConfigOption, console, handles_errors
from timoe_core.config import ExportConfig, resolve_config
from timoe_core.interop.export import export_model


@handles_errors
def export(
    model: str | None = typer.Option(
        None, "--model", help="Run dir, TiMoE bundle, folder of expert run dirs, or hf:ORG/NAME."
    ),
    format: str | None = typer.Option(
        None, "--format", help="hf: a transformers GPT2LMHeadModel folder with the GPT-2 "
        "tokenizer files."
    ),
    out: Path | None = typer.Option(None, "--out", help="Folder to write (new or empty)."),
    query_date: str | None = typer.Option(
        None, "--query-date", help="With a bundle or folder: only the experts usable as of DATE "
        "(default: every expert)."
    ),
    policy: str | None = typer.Option(None, "--policy", help="Eligibility: inclusive | strict."),
    config: Path | None = ConfigOption,
) -> None:
    """Export timoe models as folders transformers opens (AutoModelForCausalLM)."""
    flags = dict(model=model, format=format, out=out, query_date=query_date, policy=policy)
    cfg = resolve_config(ExportConfig, config, flags)
    exported = export_model(cfg)
    for e in exported:
        where = cfg.out if str(e.folder) == "." else cfg.out / e.folder
        console.print(f"{e.label}: {where} (GPT2LMHeadModel)", highlight=False)
