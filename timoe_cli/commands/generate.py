"""`timoe generate`: sample text from a TiMoE bundle as of a query date (or one model)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from timoe_cli.common import ConfigOption, err_console, handles_errors
from timoe_cli.options import config_options
from timoe_core.config import GenerateConfig, resolve_config
from timoe_core.text_generation import run_generate

_FIELDS = [
    "model", "query_date", "prompt", "max_new_tokens", "temperature", "top_k", "greedy", "seed",
    "strategy", "policy", "use_cache", "device",
]


@handles_errors
@config_options(GenerateConfig, _FIELDS)
def generate(config: Path | None = ConfigOption, *, flags: dict[str, Any]) -> None:
    """Sample text from a TiMoE bundle as of a query date."""
    cfg = resolve_config(GenerateConfig, config, flags)
    out = run_generate(cfg)
    assert cfg.prompt is not None  # run_generate refuses a missing --prompt
    for note in out.notes:
        err_console.print(note, highlight=False, markup=False)
    result = out.result
    sys.stdout.write(cfg.prompt + out.text + "\n")
    sys.stdout.flush()
    who = ", ".join(result.experts) if result.experts else "one model"
    stopped = "end of text" if result.stop_reason == "eot" else "max new tokens"
    err_console.print(
        f"{len(result.tokens)} tokens from {who} in {result.seconds:.2f}s "
        f"({result.tokens_per_s:.1f} tokens/s), stopped at {stopped}",
        highlight=False, markup=False,
    )
