"""The demo's settings (the default run and --quick), where each stage writes, and the
names of the files it leaves under --out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from timoe_core.config import DemoConfig
from timoe_core.timeslices import CutoffEvery

STATE_FILENAME = "demo.json"
REPORT_FILENAME = "report.json"
QA_PLOT_FILENAME = "tsqa.png"
PERPLEXITY_PLOT_FILENAME = "perplexity.png"
QUICK_DOCS_PER_YEAR = 40  # --quick's corpus size (what tells a quick run's settings apart)
QUICK_NOTE = ("--quick checks that the pipeline runs end to end; its models and question "
              "set are too small to compare models: read its figures as noise")

# The demo's stages: one per year (see stages.training_options). With yearly artefacts the
# stale-answer table's two columns answer from the same artefacts; monthly stages make
# them differ.
DEMO_CUTOFF_EVERY: CutoffEvery = "year"

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
    expert_steps: int  # per year-stage of every expert and of the dense model
    router_steps: int  # per router stage (one per data year)
    router_lr: float
    coadapt_steps: int  # per coadapt stage
    coadapt_lr: float
    eval_windows_per_year: int
    eval_items: int | None  # None: every built-in question
    seed: int
    device: str


def demo_settings(cfg: DemoConfig) -> DemoSettings:
    """The default run (<= 10 min on a 2-core CPU) or --quick (<= 2 min)."""
    # Batch 8: at equal tokens, twice the optimizer steps of batch 16 take a tiny expert
    # from held-out loss 2.76 to 1.32 in the same time (2013-2014 expert, 40x16 vs 80x8).
    common = dict(val_fraction=0.1, seq_len=64, n_layer=2, n_head=4, n_embd=128,
                  batch_size=8, expert_lr=3e-3, router_lr=3e-3, coadapt_lr=3e-4,
                  seed=cfg.seed, device=cfg.device)
    if cfg.quick:
        return DemoSettings(**common, docs_per_year=QUICK_DOCS_PER_YEAR, expert_steps=8,
                            router_steps=1, coadapt_steps=1, eval_windows_per_year=4, eval_items=48)
    return DemoSettings(**common, docs_per_year=200, expert_steps=40, router_steps=5,
                        coadapt_steps=3, eval_windows_per_year=8, eval_items=None)


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
