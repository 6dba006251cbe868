"""The demo's settings (the default run and --quick), where each stage writes, and the
names of the files it leaves under --out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from timoe_core.config import AdaptedWeights, DemoConfig
from timoe_core.model.weights import StorageDtype
from timoe_core.timeslices import CutoffEvery, months_per_period

STATE_FILENAME = "demo.json"
REPORT_FILENAME = "report.json"
QA_PLOT_FILENAME = "tsqa.png"
PERPLEXITY_PLOT_FILENAME = "perplexity.png"
QUICK_DOCS_PER_YEAR = 40  # --quick's corpus size (what tells a quick run's settings apart)
QUICK_NOTE = ("--quick checks that the pipeline runs end to end; its models and question "
              "set are too small to compare models: read its figures as noise")

# eval_progress(description, done, total), as compare_models reports it
EvalProgress = Callable[[str, int, int], None]


class DemoSettings(BaseModel):
    """Everything that decides the demo's numbers; a rerun must match it to resume."""

    docs_per_year: int
    val_fraction: float  # the held-out share: enough windows for every year's perplexity
    seq_len: int
    n_layer: int
    n_head: int
    n_embd: int
    batch_size: int
    expert_lr: float
    cutoff_every: CutoffEvery  # every training stage's period (demo --cutoff-every)
    # per stage of every expert and of the dense model; None: one pass over the windows
    # new in each period (close to the yearly stages' budget, see demo_settings)
    expert_steps: int | None
    snapshot_kind: Literal["decay", "average"]  # of the expert and dense-series snapshots
    snapshot_dtype: StorageDtype  # of those snapshots, the router snapshots, adapted experts
    router_steps: int  # per router stage (one per period with data)
    router_lr: float
    coadapt_steps: int  # per coadapt stage
    adapted_weights: AdaptedWeights  # what coadapt trains of each expert
    coadapt_lr: float
    eval_windows_per_year: int
    eval_items: int | None  # None: every built-in question
    seed: int
    device: str


def demo_settings(cfg: DemoConfig) -> DemoSettings:
    """The default run (<= 10 min on a 2-core CPU) or --quick (<= 2 min), at yearly
    cutoffs; `--cutoff-every month` (or quarter) trains about the yearly budget."""
    # Batch 8: at equal tokens, twice the optimizer steps of batch 16 take a tiny expert
    # from held-out loss 2.76 to 1.32 in the same time (2013-2014 expert, 40x16 vs 80x8).
    common = dict(val_fraction=0.1, seq_len=64, n_layer=2, n_head=4, n_embd=128,
                  batch_size=8, expert_lr=3e-3, router_lr=3e-3, coadapt_lr=3e-4,
                  seed=cfg.seed, device=cfg.device)
    yearly_cutoffs = dict(cutoff_every="year", snapshot_kind="decay", snapshot_dtype="float32",
                          adapted_weights="all")
    if cfg.quick:
        yearly = DemoSettings(**common, **yearly_cutoffs, docs_per_year=QUICK_DOCS_PER_YEAR,
                              expert_steps=8, router_steps=1, coadapt_steps=1,
                              eval_windows_per_year=4, eval_items=48)
    else:
        yearly = DemoSettings(**common, **yearly_cutoffs, docs_per_year=200, expert_steps=40,
                              router_steps=5, coadapt_steps=3, eval_windows_per_year=8,
                              eval_items=None)
    if cfg.cutoff_every == "year":
        return yearly
    # Shorter periods at about the yearly budget: experts take one pass over each
    # period's new windows (the default's 40 steps a year are about one pass of a year's
    # 292 windows of batch 8: monthly, 0.8x its steps; --quick's months hold fewer windows
    # than a batch and take one step each, 1.4x its 8 a year); a router or coadapt stage
    # takes its share of the yearly steps, at least one (monthly: 12 a year against the
    # default's 5 and 3). The averaged
    # snapshot needs no extra step where a decay branch per period would add one each,
    # and bfloat16 halves the bytes of 12 times as many snapshots; coadapt leaves the
    # token embedding (94% of a demo expert) as it was, so each of its 12 times as many
    # adapted experts is stored as a small delta from its parent
    # (tests/test_demo_settings.py).
    share = months_per_period(cfg.cutoff_every) / 12
    return yearly.model_copy(update=dict(
        cutoff_every=cfg.cutoff_every, expert_steps=None, snapshot_kind="average",
        snapshot_dtype="bfloat16", adapted_weights="blocks",
        router_steps=max(1, round(yearly.router_steps * share)),
        coadapt_steps=max(1, round(yearly.coadapt_steps * share))))


@dataclass(frozen=True)
class DemoLayout:
    """Where each stage writes, under the demo's --out."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def experts(self) -> Path:
        return self.root / "experts"

    @property
    def dense(self) -> Path:
        return self.root / "dense"

    def bundle(self, strategy: str) -> Path:
        return self.root / f"timoe-{strategy}"

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILENAME
