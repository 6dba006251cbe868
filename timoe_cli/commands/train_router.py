"""`timoe train-router`: build a TiMoE bundle; `--strategy avg` needs no training."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from timoe_cli.common import ConfigOption, console, handles_errors
from timoe_core.config import MixtureOptions, TrainRouterConfig, resolve_config, save_config
from timoe_core.errors import TimoeError
from timoe_core.model.mixture import BUNDLE_FILENAME, TiMoE
from timoe_core.timeslices import first_eligible_date


@handles_errors
def train_router(
    strategy: str | None = typer.Option(
        None, "--strategy",
        help="avg: write the bundle (no training) | learned-avg: train a router.",
    ),
    experts: list[Path] | None = typer.Option(
        None, "--experts", help="A folder whose sub-folders are expert run dirs, or a run dir; "
        "repeat the option for several."
    ),
    data: Path | None = typer.Option(None, "--data", help="Prepared data dir (learned-avg)."),
    out: Path | None = typer.Option(None, "--out", help="The bundle dir to write."),
    policy: str | None = typer.Option(None, "--policy", help="Eligibility: inclusive | strict."),
    top_k: int | None = typer.Option(None, "--top-k", help="Router: keep the k largest weights."),
    overwrite: bool | None = typer.Option(
        None, "--overwrite/--no-overwrite", help="Replace a bundle already in --out."
    ),
    config: Path | None = ConfigOption,
) -> None:
    """Build a TiMoE bundle from expert run dirs; learned-avg trains the router."""
    flags = dict(
        strategy=strategy, experts=list(experts) if experts else None, data=data, out=out,
        policy=policy, top_k=top_k, overwrite=overwrite,
    )
    cfg = resolve_config(TrainRouterConfig, config, flags)
    run_train_router(cfg)


def mixture_options(cfg: TrainRouterConfig) -> MixtureOptions:
    return MixtureOptions(**{name: getattr(cfg, name) for name in MixtureOptions.model_fields})


def check_out_dir(out: Path | None, overwrite: bool) -> Path:
    """--out must be new, empty, or a bundle we may replace; never a run dir or a file."""
    if out is None:
        raise TimoeError("--out is required: the folder to write the bundle to")
    if out.exists() and not out.is_dir():
        raise TimoeError(f"--out {out} is a file: give a folder for the bundle")
    if (out / "run.json").is_file():
        raise TimoeError(f"--out {out} is a run dir: write the bundle to a folder of its own")
    if (out / BUNDLE_FILENAME).is_file() and not overwrite:
        raise TimoeError(f"--out {out} already holds a bundle: pass --overwrite to replace it")
    return out


def run_train_router(cfg: TrainRouterConfig) -> TiMoE:
    if cfg.strategy != "avg":
        raise TimoeError(
            f"--strategy {cfg.strategy} (router training) is not available yet in this version: "
            "use --strategy avg, which needs no training"
        )
    if not cfg.experts:
        raise TimoeError("--experts is required: a folder of expert run dirs (or run dirs)")
    out = check_out_dir(cfg.out, cfg.overwrite)
    mix = TiMoE.from_expert_dirs(cfg.experts, strategy=cfg.strategy, options=mixture_options(cfg))
    mix.save_bundle(out)
    save_config(cfg, out)
    print_bundle(mix, out)
    return mix


def print_bundle(mix: TiMoE, out: Path) -> None:
    table = Table(title=Text(f"TiMoE bundle {out} ({mix.strategy}, policy {mix.policy})"),
                  title_justify="left", header_style="bold")
    for header in ("slice", "expert run dir", "weights sha256"):
        table.add_column(header)
    sha = mix.expert_checksums
    for label, directory in mix.expert_dirs.items():
        table.add_row(Text(label), Text(str(directory)), Text((sha[label] or "")[:16]))
    console.print(table)
    gaps = [
        f"{a.end_year + 1}-{b.start_year - 1}" if b.start_year - a.end_year > 2
        else str(a.end_year + 1)
        for a, b in zip(mix.slices, mix.slices[1:]) if b.start_year > a.end_year + 1
    ]
    if gaps:
        console.print(f"no expert for {', '.join(gaps)}: those years are never covered")
    first = first_eligible_date(mix.slices, mix.policy)  # type: ignore[arg-type]
    console.print(f"first usable query date: {first.isoformat()}")
