"""`timoe export`: timoe experts as transformers GPT2LMHeadModel folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timoe_cli.common import ConfigOption, console, handles_errors
from timoe_cli.options import config_options
from timoe_core.config import ExportConfig, resolve_config
from timoe_core.interop.export import export_model

_FIELDS = ["model", "format", "out", "query_date", "policy"]


@handles_errors
@config_options(ExportConfig, _FIELDS)
def export(config: Path | None = ConfigOption, *, flags: dict[str, Any]) -> None:
    """Export timoe models as folders transformers opens (AutoModelForCausalLM)."""
    cfg = resolve_config(ExportConfig, config, flags)
    exported = export_model(cfg)
    assert cfg.out is not None  # export_model refuses a missing --out
    for e in exported:
        where = cfg.out if str(e.folder) == "." else cfg.out / e.folder
        console.print(f"{e.label}: {where} (GPT2LMHeadModel)", highlight=False)
