"""`timoe demo --cutoff-every`: monthly (or quarterly) stages at the yearly budget, and the
disk they need; planned only (no training), so fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from timoe_core.config import DemoConfig, PrepareDataConfig
from timoe_core.data.prepare import prepare_data
from timoe_core.demo import demo_settings, disk_needed
from timoe_core.demo.settings import DemoLayout
from timoe_core.demo.stages import expert_config
from timoe_core.timeslices import TimeSlicing
from timoe_core.train.expert_plan import plan_expert_run


def _planned(settings, layout: DemoLayout) -> dict[str, tuple[int, int, int]]:
    """(optimizer steps in all, main-line steps, stages) of each demo expert and of the
    dense run."""
    out = {}
    for sl in [*TimeSlicing().slices, None]:
        plan = plan_expert_run(expert_config(settings, layout, sl), world_size=1,
                               check_run_dir=False)
        main = sum(stage.steps for stage in plan.stages)
        out[sl.label if sl else "dense"] = (plan.total_steps, main, len(plan.stages))
    return out


# (quick, the least and the most monthly main-line steps per yearly one): one pass over
# each month's new windows is 0.8x the default's 40 steps a year (36 windows' worth of
# batches a year); --quick's months hold fewer windows than a batch, and a month with
# any takes a step, so 12 a year against its 8
BUDGET = {False: (0.75, 1.0), True: (1.0, 1.6)}


@pytest.mark.parametrize("quick", [True, False])
def test_monthly_stages_and_their_budget(tmp_path: Path, quick: bool):
    yearly = demo_settings(DemoConfig(quick=quick))
    monthly = demo_settings(DemoConfig(quick=quick, cutoff_every="month"))
    assert (yearly.cutoff_every, monthly.cutoff_every) == ("year", "month")
    # no extra training step per snapshot, half the bytes of twelve times as many, and
    # adapted experts stored as deltas without the token embedding
    assert (monthly.snapshot_kind, monthly.snapshot_dtype, monthly.adapted_weights) == (
        "average", "bfloat16", "blocks")
    assert yearly.adapted_weights == "all"
    differ = {"cutoff_every", "expert_steps", "snapshot_kind", "snapshot_dtype",
              "adapted_weights", "router_steps", "coadapt_steps"}
    assert monthly.model_dump(exclude=differ) == yearly.model_dump(exclude=differ)
    layout = DemoLayout(tmp_path)
    prepare_data(PrepareDataConfig(source="builtin", out=layout.data, seq_len=yearly.seq_len,
                                   val_fraction=yearly.val_fraction,
                                   builtin_docs_per_year=yearly.docs_per_year,
                                   seed=yearly.seed))
    by_year, by_month = _planned(yearly, layout), _planned(monthly, layout)
    least, most = BUDGET[quick]
    for name, (total, main, stages) in by_month.items():
        _, y_main, y_stages = by_year[name]
        # a stage per month with new windows: many more cutoffs than the yearly stages
        assert stages >= 10 * y_stages, (name, stages, y_stages)
        # averaged snapshots: no decay branch, only the run's final decay step
        assert total == main + 1
        assert least * y_main <= main <= most * y_main, (name, main, y_main)


def test_disk_estimate_grows_with_the_cutoffs_it_keeps():
    needs = {every: disk_needed(demo_settings(DemoConfig(quick=True, cutoff_every=every)),
                                keep_checkpoints=False)
             for every in ("year", "quarter", "month")}
    # bfloat16 snapshots: the monthly build keeps 12 times the cutoffs in far less than
    # 12 times the bytes
    assert needs["year"] < needs["quarter"] < needs["month"] < 8 * needs["year"]
