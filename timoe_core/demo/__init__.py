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
                  temporal QA, each item read as of its own date     OUT/report.json, *.png
                  (and the stale answers after a change that year, from year-end
                  against month-end artefacts: stale_by_cutoffs)

Resume: OUT/demo.json records the settings and each finished stage. A rerun skips the
finished stages; a training stage that was interrupted resumes from its last
checkpoint, since the training functions resume by themselves.
"""

from timoe_core.demo.disk import DiskPlan, disk_needed, disk_plan
from timoe_core.demo.headline import LeakVerdict, headline, leak_verdict, verdict_line
from timoe_core.demo.run import run_demo
from timoe_core.demo.settings import (
    PERPLEXITY_PLOT_FILENAME,
    QA_PLOT_FILENAME,
    QUICK_NOTE,
    REPORT_FILENAME,
    STATE_FILENAME,
    DemoLayout,
    DemoSettings,
    EvalProgress,
    demo_settings,
)
from timoe_core.demo.stages import Stage, StageCallback
from timoe_core.demo.stale import (
    StaleVerdict,
    stale_by_cutoffs,
    stale_line,
    stale_table,
    stale_verdict,
)

__all__ = [
    "PERPLEXITY_PLOT_FILENAME",
    "QA_PLOT_FILENAME",
    "QUICK_NOTE",
    "REPORT_FILENAME",
    "STATE_FILENAME",
    "DemoLayout",
    "DemoSettings",
    "DiskPlan",
    "EvalProgress",
    "LeakVerdict",
    "Stage",
    "StageCallback",
    "StaleVerdict",
    "demo_settings",
    "disk_needed",
    "disk_plan",
    "headline",
    "leak_verdict",
    "run_demo",
    "stale_by_cutoffs",
    "stale_line",
    "stale_table",
    "stale_verdict",
    "verdict_line",
]
