"""`timoe train-router`: a TiMoE bundle; `--strategy avg` writes it, learned-avg trains a router."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

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
from timoe_core.timeslices import first_eligible_date


@handles_errors
@training_options
def train_router(
    strategy: Annotated[
        str | None,
        typer.Option(
            help="learned-avg: train a router, experts frozen (default) | avg: write the "
            "equal-weight bundle (no training, no --data)."
        ),
    ] = None,
    experts: Experts = None,
    policy: Policy = None,
    top_k: TopK = None,
    seq_len: MixSeqLen = None,
    cache_log_probs: Annotated[
        bool | None,
        typer.Option(
            "--cache-log-probs/--no-cache-log-probs",
            help="Keep the frozen experts' target log-probs on disk (fp16) and reuse them "
            "from the second epoch on (default on).",
        ),
    ] = None,
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
    """Build a TiMoE bundle from expert run dirs; learned-avg trains its router."""
    from timoe_core.config import TrainRouterConfig
    from timoe_core.train.router import train_router as run

    cfg = load_config(
        TrainRouterConfig,
        config,
        strategy=strategy,
        experts=list(experts) if experts else None,
        policy=policy,
        top_k=top_k,
        seq_len=seq_len,
        cache_log_probs=cache_log_probs,
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
    if cfg.strategy != "avg":
        console.print(f"trained {out} ({training_summary(out)})", highlight=False, soft_wrap=True)
    print_bundle(TiMoE.from_bundle(out), out)


def print_bundle(mix: TiMoE, out: Path) -> None:
    table = Table(
        title=Text(f"TiMoE bundle {out} ({mix.strategy}, policy {mix.policy})"),
        title_justify="left",
        header_style="bold",
    )
    for header in ("slice", "expert weights", "weights sha256"):
        table.add_column(header)
    sha = mix.expert_checksums
    for label, directory in mix.expert_dirs.items():
        table.add_row(Text(label), Text(str(directory)), Text((sha[label] or "")[:16]))
    console.print(table)
    gaps = [
        f"{a.end_year + 1}-{b.start_year - 1}"
        if b.start_year - a.end_year > 2
        else str(a.end_year + 1)
        for a, b in zip(mix.slices, mix.slices[1:])
        if b.start_year > a.end_year + 1
    ]
    if gaps:
        console.print(f"no expert for {', '.join(gaps)}: those years are never covered")
    first = first_eligible_date(mix.slices, mix.policy)  # type: ignore[arg-type]
    console.print(f"first usable query date: {first.isoformat()}")
