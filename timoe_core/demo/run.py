"""run_demo: every stage in order, skipping the finished ones (demo.json), pruning the
finished training stages' checkpoints."""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

from timoe_core.config import DemoConfig, save_config
from timoe_core.demo.disk import check_disk
from timoe_core.demo.outdir import check_out
from timoe_core.demo.settings import STATE_FILENAME, DemoLayout, EvalProgress, demo_settings
from timoe_core.demo.stages import Stage, StageCallback, demo_stages
from timoe_core.io import atomic_write_json
from timoe_core.lock import output_lock
from timoe_core.timeslices import TimeSlicing


def _prune_finished(stage: Stage, layout: DemoLayout) -> None:
    """A finished training stage is never resumed: drop its runs' trainer checkpoints
    (optimizer moments and all; weights, snapshots and metrics stay). Staged routers
    drop theirs themselves (`keep_stage_checkpoints`)."""
    from timoe_core.train.state import checkpoints_dir

    if stage.name.startswith("expert "):
        runs = [layout.experts / stage.name.removeprefix("expert ")]
    elif stage.name == "dense":
        runs = [layout.dense]
    else:
        return
    for run in runs:
        shutil.rmtree(checkpoints_dir(run), ignore_errors=True)


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
    state = check_out(cfg, settings)
    check_disk(cfg)
    layout = DemoLayout(cfg.out)
    cfg.out.mkdir(parents=True, exist_ok=True)
    state_path = cfg.out / STATE_FILENAME
    atomic_write_json(state_path, state)
    save_config(cfg, cfg.out)
    stages = demo_stages(settings, layout, TimeSlicing(), eval_progress, cfg.keep_checkpoints)
    report: dict[str, Any] | None = None
    ran_any = False
    for i, stage in enumerate(stages, 1):
        done = stage.name in state["finished"]
        if on_stage:
            on_stage(i, len(stages), stage, done)
        if not done:
            t0 = time.perf_counter()
            ran_any = True
            value = stage.run()
            if stage.name == "evaluate":
                report = value
            state["finished"][stage.name] = {"seconds": round(time.perf_counter() - t0, 2)}
            atomic_write_json(state_path, state)
        if not cfg.keep_checkpoints:  # also a stage finished before a kill let it prune
            _prune_finished(stage, layout)
    if report is None:
        report = json.loads(layout.report.read_text())
    report["stage_seconds"] = {k: v["seconds"] for k, v in state["finished"].items()}
    report["total_seconds"] = round(sum(report["stage_seconds"].values()), 2)
    if ran_any:  # a rerun that skipped every stage leaves report.json as it was
        atomic_write_json(layout.report, report)
    return report
