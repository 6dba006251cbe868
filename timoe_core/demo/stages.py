"""The demo's stages, each calling the library function behind the matching CLI command,
and the evaluate stage's report (comparison, headline, stale answers, plots)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from timoe_core.config import (
    CoadaptConfig,
    PrepareDataConfig,
    TrainExpertConfig,
    TrainRouterConfig,
)
from timoe_core.demo.headline import headline
from timoe_core.demo.settings import (
    PERPLEXITY_PLOT_FILENAME,
    QA_PLOT_FILENAME,
    QUICK_DOCS_PER_YEAR,
    QUICK_NOTE,
    DemoLayout,
    DemoSettings,
    EvalProgress,
)
from timoe_core.demo.stale import STALE_MODELS, stale_by_cutoffs
from timoe_core.io import atomic_write_json
from timoe_core.timeslices import TimeSlice, TimeSlicing


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[], Any]


# on_stage(index (1-based), total, stage, skipped)
StageCallback = Callable[[int, int, Stage, bool], None]


def training_options(s: DemoSettings, steps: int | None, lr: float) -> dict[str, Any]:
    """The options every demo training stage shares: `steps` per chronological stage
    (None: one pass over each period's new windows), a stage per `s.cutoff_every`."""
    return dict(steps_per_stage=steps, batch_size=s.batch_size, lr=lr, seed=s.seed,
                device=s.device, log_every=max(1, (steps or 10) // 2),
                cutoff_every=s.cutoff_every)


def expert_config(s: DemoSettings, layout: DemoLayout, time_slice: TimeSlice | None
                  ) -> TrainExpertConfig:
    """The train-expert config of the demo's expert of `time_slice`, or of its dense run
    (None: --all-years)."""
    where = (dict(year=time_slice.start_year, out=layout.experts / time_slice.label)
             if time_slice is not None else dict(all_years=True, out=layout.dense))
    return TrainExpertConfig(
        **where, data=layout.data, n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd,
        seq_len=s.seq_len, snapshot_kind=s.snapshot_kind, snapshot_dtype=s.snapshot_dtype,
        **training_options(s, s.expert_steps, s.expert_lr))


def demo_stages(
    s: DemoSettings, layout: DemoLayout, slicing: TimeSlicing, eval_progress: EvalProgress | None,
    keep_checkpoints: bool = False,
) -> list[Stage]:
    from timoe_core.data.prepare import prepare_data
    from timoe_core.recipes.registry import coadapt, train_router
    from timoe_core.train import train_expert

    stages = [Stage("data", "prepare-data: the built-in corpus", lambda: prepare_data(
        PrepareDataConfig(source="builtin", out=layout.data, seq_len=s.seq_len,
                          val_fraction=s.val_fraction,
                          builtin_docs_per_year=s.docs_per_year, seed=s.seed, overwrite=True)))]

    def expert(sl: TimeSlice) -> Callable[[], Any]:  # binds this slice, not the loop's last
        return lambda: train_expert(expert_config(s, layout, sl))

    for sl in slicing.slices:
        stages.append(Stage(f"expert {sl.label}", f"train-expert: the {sl.label} expert",
                            expert(sl)))
    stages.append(Stage("dense", "train-expert --all-years: dense series, same compute",
                        lambda: train_expert(expert_config(s, layout, None))))
    stages.append(Stage("avg", "train-router --strategy avg: the equal-weight bundle",
                        lambda: train_router(TrainRouterConfig(
                            strategy="avg", experts=[layout.experts], out=layout.bundle("avg"),
                            overwrite=True))))
    stages.append(Stage("inclusive", "train-router --strategy avg --policy inclusive",
                        lambda: train_router(TrainRouterConfig(
                            strategy="avg", experts=[layout.experts], policy="inclusive",
                            out=layout.bundle("inclusive"), overwrite=True))))
    stages.append(Stage("learned-avg", "train-router --strategy learned-avg",
                        lambda: train_router(TrainRouterConfig(
                            strategy="learned-avg", experts=[layout.experts], data=layout.data,
                            out=layout.bundle("learned-avg"),
                            keep_stage_checkpoints=keep_checkpoints,
                            snapshot_dtype=s.snapshot_dtype,
                            **training_options(s, s.router_steps, s.router_lr)))))
    stages.append(Stage("coadapt", "coadapt: router and each batch's own expert",
                        lambda: coadapt(CoadaptConfig(
                            experts=[layout.experts], data=layout.data,
                            out=layout.bundle("coadapt"), router=layout.bundle("learned-avg"),
                            keep_stage_checkpoints=keep_checkpoints,
                            snapshot_dtype=s.snapshot_dtype, adapted_weights=s.adapted_weights,
                            **training_options(s, s.coadapt_steps, s.coadapt_lr)))))
    stages.append(Stage("evaluate", "evaluate: every strategy and baseline, side by side",
                        lambda: _evaluate(s, layout, slicing, eval_progress)))
    return stages


# Models compared in the report: (label, entry for compare_models).
def _entries(layout: DemoLayout, slicing: TimeSlicing) -> list[tuple[str, str]]:
    return [
        ("TiMoE avg", f"{layout.bundle('avg')}:avg"),
        ("TiMoE learned-avg", f"{layout.bundle('learned-avg')}:learned-avg"),
        ("TiMoE coadapt", f"{layout.bundle('coadapt')}:coadapt"),
        ("TiMoE avg, inclusive (paper rule)", f"{layout.bundle('inclusive')}:avg"),
        ("dense series (leak-free)", f"{layout.dense}:dense-series"),
        ("dense (all years)", f"{layout.dense}:dense"),
    ]


def _evaluate(
    s: DemoSettings, layout: DemoLayout, slicing: TimeSlicing, progress: EvalProgress | None
) -> dict[str, Any]:
    from timoe_core.evaluate import compare_models, plot_compare

    entries = _entries(layout, slicing)
    result = compare_models(
        [e for _, e in entries], layout.data, "builtin", max_docs=s.eval_windows_per_year,
        max_items=s.eval_items, seq_len=s.seq_len, device=s.device, progress=progress,
    )
    for (label, _), model in zip(entries, result["models"]):
        model["label"] = label
    stale = stale_by_cutoffs(s, [(label, e) for label, e in entries if label in STALE_MODELS],
                             progress)
    report = {"settings": s.model_dump(), "comparison": result, "headline": headline(result),
              "stale_by_cutoffs": stale,
              "note": QUICK_NOTE if s.docs_per_year <= QUICK_DOCS_PER_YEAR else None}
    atomic_write_json(layout.report, report)
    plot_compare(layout.root / QA_PLOT_FILENAME, result, panels=("qa",))
    plot_compare(layout.root / PERPLEXITY_PLOT_FILENAME, result, panels=("perplexity",))
    return report
