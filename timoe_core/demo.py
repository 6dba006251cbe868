"""`timoe demo`: the whole pipeline on the built-in corpus, one stage at a time.

Each stage calls the library function behind the matching CLI command:

    data          prepare_data (builtin corpus)                      OUT/data
    expert L      train_expert --year, one per time slice, a         OUT/experts/L
                  snapshot after its first year (point-in-time)
    dense         train_expert --all-years, the same steps per year  OUT/dense
                  as the experts: its snapshots are the leak-free dense series, its
                  final weights the all-years (leaky) dense baseline
    avg           train_router --strategy avg (a bundle, no training)  OUT/timoe-avg
    inclusive     the same avg bundle under the paper code's rule    OUT/timoe-inclusive
    learned-avg   train_router --strategy learned-avg, staged        OUT/timoe-learned-avg
    coadapt       coadapt, staged, from the learned-avg router       OUT/timoe-coadapt
    evaluate      compare_models: held-out perplexity per data year and the built-in
                  temporal QA, each item read as of its own year     OUT/report.json, *.png

Resume: OUT/demo.json records the settings and each finished stage. A rerun skips the
finished stages; a training stage that was interrupted resumes from its last
checkpoint, since the training functions resume by themselves.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from timoe_core.config import (
    CONFIG_FILENAME,
    CoadaptConfig,
    DemoConfig,
    PrepareDataConfig,
    TrainExpertConfig,
    TrainRouterConfig,
    save_config,
)
from timoe_core.errors import TimoeError
from timoe_core.io import atomic_write_json
from timoe_core.lock import lock_path, output_lock
from timoe_core.timeslices import TimeSlicing

STATE_FILENAME = "demo.json"
REPORT_FILENAME = "report.json"
QA_PLOT_FILENAME = "tsqa.png"
PERPLEXITY_PLOT_FILENAME = "perplexity.png"


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
        return DemoSettings(**common, docs_per_year=40, expert_steps=8, router_steps=1,
                            coadapt_steps=1, eval_windows_per_year=4, eval_items=48)
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


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[], Any]


# on_stage(index (1-based), total, stage, skipped)
StageCallback = Callable[[int, int, Stage, bool], None]
# eval_progress(description, done, total), as compare_models reports it
EvalProgress = Callable[[str, int, int], None]


def _training(s: DemoSettings, steps: int, lr: float) -> dict[str, Any]:
    """The options every demo training stage shares: `steps` per chronological stage."""
    return dict(steps_per_stage=steps, batch_size=s.batch_size, lr=lr, seed=s.seed,
                device=s.device, log_every=max(1, steps // 2))


def _stages(
    s: DemoSettings, layout: DemoLayout, slicing: TimeSlicing, eval_progress: EvalProgress | None
) -> list[Stage]:
    from timoe_core.data.prepare import prepare_data
    from timoe_core.recipes.registry import coadapt, train_router
    from timoe_core.train import train_expert

    model = dict(n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, seq_len=s.seq_len)
    expert_training = _training(s, s.expert_steps, s.expert_lr)
    stages = [Stage("data", "prepare-data: the built-in corpus", lambda: prepare_data(
        PrepareDataConfig(source="builtin", out=layout.data, seq_len=s.seq_len,
                          val_fraction=s.val_fraction,
                          builtin_docs_per_year=s.docs_per_year, seed=s.seed, overwrite=True)))]
    for sl in slicing.slices:
        stages.append(Stage(f"expert {sl.label}", f"train-expert: the {sl.label} expert",
                            lambda sl=sl: train_expert(TrainExpertConfig(
                                year=sl.start_year, data=layout.data,
                                out=layout.experts / sl.label, **model, **expert_training))))
    stages.append(Stage("dense", "train-expert --all-years: dense series, same compute",
                        lambda: train_expert(TrainExpertConfig(
                            all_years=True, data=layout.data, out=layout.dense, **model,
                            **expert_training))))
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
                            **_training(s, s.router_steps, s.router_lr)))))
    stages.append(Stage("coadapt", "coadapt: router and each batch's own expert",
                        lambda: coadapt(CoadaptConfig(
                            experts=[layout.experts], data=layout.data,
                            out=layout.bundle("coadapt"), router=layout.bundle("learned-avg"),
                            **_training(s, s.coadapt_steps, s.coadapt_lr)))))
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
    report = {"settings": s.model_dump(), "comparison": result, "headline": headline(result)}
    atomic_write_json(layout.report, report)
    plot_compare(layout.root / QA_PLOT_FILENAME, result, panels=("qa",))
    plot_compare(layout.root / PERPLEXITY_PLOT_FILENAME, result, panels=("perplexity",))
    return report


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The demo's claim in numbers: each model's QA accuracy and future-error rate, and
    whether every TiMoE strategy leaks fewer future answers than the dense model."""
    rows = {}
    for m in result["models"]:
        qa = m.get("tsqa") or {}
        rows[m["label"]] = {
            "accuracy": qa.get("accuracy"),
            "future_error": (qa.get("error_rates") or {}).get("future"),
            "perplexity_mean": m.get("perplexity_mean"),
        }
    dense = next((v for k, v in rows.items() if k.startswith("dense (all")), None)
    timoe = {k: v for k, v in rows.items() if k.startswith("TiMoE") and "inclusive" not in k}
    fewer = None
    if dense is not None and dense["future_error"] is not None and timoe:
        fewer = all(v["future_error"] is not None and v["future_error"] < dense["future_error"]
                    for v in timoe.values())
    return {"models": rows, "timoe_leaks_less_than_dense": fewer}


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_demo_output(p: Path) -> bool:
    """An entry of --out that the demo writes (all --overwrite may delete)."""
    fixed = {"data", "experts", "dense", STATE_FILENAME, REPORT_FILENAME, QA_PLOT_FILENAME,
             PERPLEXITY_PLOT_FILENAME, CONFIG_FILENAME}
    if p.name in fixed or re.fullmatch(r"timoe-[a-z-]+", p.name):
        return True
    # locks, staging and temp files of the commands the demo runs
    return p.name.startswith(".") and (
        p.name.endswith((".lock", ".tmp")) or ".partial-" in p.name or ".old-" in p.name
    )


def _remove_demo_outputs(out: Path) -> None:
    """Delete what an earlier demo wrote in `out`, refusing (before deleting anything)
    when `out` holds anything else: --overwrite never deletes a user's file."""
    foreign = [p for p in sorted(out.iterdir()) if not _is_demo_output(p)]
    if foreign:
        raise TimoeError(
            f"--out {out} holds {foreign[0]}, which the demo did not write: refusing to "
            "start the demo over there even with --overwrite; move it out or give another --out"
        )
    for p in sorted(out.iterdir()):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p != lock_path(out):
            p.unlink()


def _check_out(cfg: DemoConfig, settings: DemoSettings) -> dict[str, Any]:
    """The demo state to continue from; refuses to write into a folder that is not a demo
    of the same settings (it never deletes anything but an earlier demo's folder)."""
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise TimoeError(f"--out {out} is a file: give a folder for the demo")
    state_path = out / STATE_FILENAME
    state = _read_state(state_path) if state_path.is_file() else None
    if out.is_dir() and any(out.iterdir()) and state is None:
        raise TimoeError(f"--out {out} is not empty and holds no demo: give a new folder")
    if state is not None and state.get("settings") != settings.model_dump():
        if not cfg.overwrite:
            diff = sorted(k for k, v in settings.model_dump().items()
                          if (state.get("settings") or {}).get(k) != v)
            raise TimoeError(f"--out {out} holds a demo with other settings ({', '.join(diff)}):"
                             " pass --overwrite to start it over, or give another --out")
        _remove_demo_outputs(out)
        state = None
    if state is None:
        state = {"settings": settings.model_dump(), "finished": {}}
    return state


def run_demo(
    cfg: DemoConfig,
    on_stage: StageCallback | None = None,
    eval_progress: EvalProgress | None = None,
) -> dict[str, Any]:
    """Run (or resume) every stage; returns the report (also in OUT/report.json)."""
    with output_lock(cfg.out):
        return _run_demo(cfg, on_stage, eval_progress)


def _run_demo(
    cfg: DemoConfig, on_stage: StageCallback | None, eval_progress: EvalProgress | None
) -> dict[str, Any]:
    settings = demo_settings(cfg)
    state = _check_out(cfg, settings)
    layout = DemoLayout(cfg.out)
    cfg.out.mkdir(parents=True, exist_ok=True)
    state_path = cfg.out / STATE_FILENAME
    atomic_write_json(state_path, state)
    save_config(cfg, cfg.out)
    stages = _stages(settings, layout, TimeSlicing(), eval_progress)
    report: dict[str, Any] | None = None
    ran_any = False
    for i, stage in enumerate(stages, 1):
        done = stage.name in state["finished"]
        if on_stage:
            on_stage(i, len(stages), stage, done)
        if done:
            continue
        t0 = time.perf_counter()
        ran_any = True
        value = stage.run()
        if stage.name == "evaluate":
            report = value
        state["finished"][stage.name] = {"seconds": round(time.perf_counter() - t0, 2)}
        atomic_write_json(state_path, state)
    if report is None:
        report = json.loads(layout.report.read_text())
    report["stage_seconds"] = {k: v["seconds"] for k, v in state["finished"].items()}
    report["total_seconds"] = round(sum(report["stage_seconds"].values()), 2)
    if ran_any:  # a rerun that skipped every stage leaves report.json as it was
        atomic_write_json(layout.report, report)
    return report
