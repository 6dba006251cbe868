"""`timoe coadapt`: train the router with each batch's own slice expert."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from timoe_cli.commands.train_router import print_bundle
from timoe_cli.common import (
    ConfigOption,
    console,
    handles_errors,
    load_config,
    run_training_command,
    training_summary,
)
from timoe_cli.options import (
    BalanceCoef,
    EntropyCoef,
    Experts,
    MixSeqLen,
    Policy,
    RouterDateFeatures,
    RouterEmbedDim,
    RouterHiddenDim,
    TopK,
    ZLossCoef,
    training_options,
)
from timoe_core.model.mixture import TiMoE


@handles_errors
@training_options
def coadapt(
    experts: Experts = None,
    router: Annotated[
        Path | None,
        typer.Option(
            "--router",
            help="Start from this bundle's router (e.g. one from `train-router --strategy "
            "learned-avg`); default: a fresh router, equal to avg at the start.",
            rich_help_panel="Mixture",
        ),
    ] = None,
    policy: Policy = None,
    top_k: TopK = None,
    seq_len: MixSeqLen = None,
    entropy_coef: EntropyCoef = None,
    balance_coef: BalanceCoef = None,
    z_loss_coef: ZLossCoef = None,
    router_embed_dim: RouterEmbedDim = None,
    router_hidden_dim: RouterHiddenDim = None,
    router_date_features: RouterDateFeatures = None,
    config: Path | None = ConfigOption,
    *,
    training: dict[str, Any],
) -> None:
    """Train the router together with each batch's own slice expert (lr default 1e-4);
    the adapted experts are stored in the bundle."""
    from timoe_core.config import CoadaptConfig
    from timoe_core.train.coadapt import coadapt as run

    cfg = load_config(
        CoadaptConfig,
        config,
        experts=list(experts) if experts else None,
        router=router,
        policy=policy,
        top_k=top_k,
        seq_len=seq_len,
        entropy_coef=entropy_coef,
        balance_coef=balance_coef,
        z_loss_coef=z_loss_coef,
        router_embed_dim=router_embed_dim,
        router_hidden_dim=router_hidden_dim,
        router_date_features=router_date_features,
        **training,
    )
    out = run_training_command(run, cfg)
    if out is None:
        return
    console.print(f"trained {out} ({training_summary(out)})", highlight=False, soft_wrap=True)
    print_bundle(TiMoE.from_bundle(out), out)
