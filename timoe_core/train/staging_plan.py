"""Planning a staged (point-in-time) mixture run: its inputs checked (`check_inputs`),
the stages' cutoffs (`router_cutoffs`), and what the run is (`staged_record`, OUT's
mixture_run.json), which a rerun must match, all before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from timoe_core.data.manifest import Manifest, token_files_read
from timoe_core.errors import TimoeError
from timoe_core.io import JSONObject, check_output_path, sha256_file
from timoe_core.model.expert_pool import ExpertRecord
from timoe_core.model.mixture import TiMoE
from timoe_core.model.run_info import MODEL_FILENAME
from timoe_core.model.weighting import Strategy
from timoe_core.timeslices import CutoffEvery, period_ends
from timoe_core.train.metrics import check_wandb_mode
from timoe_core.train.mixture_record import MixtureConfig, strategy_options
from timoe_core.train.mixture_run import check_required_inputs
from timoe_core.train.run_dir import RunDirAction


def router_cutoffs(artefacts: list[ExpertRecord], every: CutoffEvery) -> list[date]:
    """The cutoffs of a staged router's stages: every period end (of `every`) from the
    first artefact's cutoff to the last's, and every artefact cutoff at which a slice
    becomes usable (so a router snapshot's slots are the slices usable until the next)."""
    cutoffs = sorted({r.cutoff for r in artefacts})
    first_of_slice = {min(r.cutoff for r in artefacts if r.label == label)
                      for label in {r.label for r in artefacts}}
    return sorted(set(period_ends(cutoffs[0], cutoffs[-1], every)) | first_of_slice)


def check_inputs(cfg: MixtureConfig, strategy: str) -> tuple[Path, Path]:
    """The staged run's inputs checked; returns (data dir, out dir)."""
    data_out = check_required_inputs(cfg)
    check_output_path(data_out[1], "--out")
    if cfg.nproc_per_node != 1 or cfg.nnodes != 1:
        raise TimoeError(
            f"a staged {strategy} router (policy point-in-time) trains its stages in one "
            "process: leave out --nproc-per-node/--nnodes, or use --policy inclusive"
        )
    if cfg.max_steps is not None or cfg.max_tokens is not None:
        flag = "--max-steps" if cfg.max_steps is not None else "--max-tokens"
        raise TimoeError(
            f"{flag} sets one budget for the whole run, but a staged {strategy} router "
            "(policy point-in-time, the default) has a budget per stage: give "
            "--steps-per-stage N, or --policy inclusive for one run over every year"
        )
    check_wandb_mode(cfg.wandb)
    return data_out


def staged_record(cfg: MixtureConfig, strategy: str, mix: TiMoE, seq_len: int,
                  manifest: Manifest) -> JSONObject:
    """mixture_run.json of a staged run: the experts (by checksum), the data read and
    every option that shapes a stage."""
    experts = {}
    for rec in mix.artefacts:
        path = rec.weights_dir() / MODEL_FILENAME
        experts[rec.key] = rec.sha256 or sha256_file(path)
    keys = ("policy", "top_k", "router_embed_dim", "router_hidden_dim", "router_date_features",
            "steps_per_stage", "cutoff_every", "seed", "batch_size", "grad_accum", "lr",
            "entropy_coef", "balance_coef", "z_loss_coef", "snapshot_dtype")
    record: JSONObject = {
        "strategy": strategy, "staged": True, "experts": experts,
        "data_files_sha256": token_files_read(manifest, {r.cutoff.year for r in mix.artefacts}),
        "seq_len": seq_len,
        "router_init": str(getattr(cfg, "router", None) or "") or None,
    }
    record |= {k: getattr(cfg, k) for k in keys} | strategy_options(cfg)
    return record


@dataclass
class StagedPlan:
    """A staged run, checked and derived before anything is written (`JobPlan`)."""

    cfg: MixtureConfig
    strategy: Strategy
    run_dir: Path
    record: JSONObject  # mixture_run.json
    action: RunDirAction = "new"
    world_size: int = 1
    total_steps: int = 0  # each stage has its own budget
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.strategy.name} (staged)"

