"""`timoe coadapt`: train the router with each batch's own slice expert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timoe_cli.commands.train_router import print_bundle
from timoe_cli.common import (
    ConfigOption,
    console,
    handles_errors,
    load_config,
    run_training_command,
    training_summary,
)
from timoe_cli.options import MIXTURE_FIELDS, training_options
from timoe_core.config import CoadaptConfig
from timoe_core.model.mixture import TiMoE


@handles_errors
@training_options(CoadaptConfig, ["experts", "router", *MIXTURE_FIELDS, "keep_stage_checkpoints",
                                   "snapshot_dtype", "adapted_weights"])
def coadapt(config: Path | None = ConfigOption, *, flags: dict[str, Any]) -> None:
    """Train the router together with each batch's own slice expert (lr default 1e-4);
    the adapted experts are stored in the bundle."""
    from timoe_core.recipes.registry import coadapt as run

    cfg = load_config(CoadaptConfig, config, **flags)
    out = run_training_command(run, cfg)
    if out is None:
        return
    console.print(f"trained {out} ({training_summary(out)})", highlight=False, soft_wrap=True)
    print_bundle(TiMoE.from_bundle(out), out)
