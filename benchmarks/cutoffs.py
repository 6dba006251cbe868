"""Cutoffs by period: how stale answers are, and what a router stage costs.

    python -m benchmarks.cutoffs [--quick] [--json FILE]

1. Staleness, computed from the cutoffs (no model): for every day d from 2014-01-01 to
   2024-12-31, an answer as of d uses artefacts with cutoffs <= d, the latest being the
   last period end on or before d (cutoffs every year, quarter or month from 2013 on).
   Its staleness is d minus that cutoff. Reported: the mean over the 4018 days, and the
   largest. Targets (issue 22): yearly about 6 months (182.6 days); monthly <= 1 month.
2. The fixed cost of a router stage: `train_router` (learned-avg, two random `tiny`
   experts, documents dated across each of 2013-2016) with `--cutoff-every year` against
   `--cutoff-every month`, each stage one pass over its new windows, so both read the
   same windows in about the same steps; the difference in seconds over the difference
   in stages is what one more stage costs (its run dir, metrics, router snapshot).
   Target: 144 stages (12 years of months) cost well under a minute: <= 0.1 s a stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Figures, figure, fmt_runs, interleaved_rounds, write_json
from benchmarks.staged import quiet, timed_runs

FIRST_DAY, LAST_DAY = date(2014, 1, 1), date(2024, 12, 31)
TARGET_MONTHLY_DAYS = 30.4  # one month
TARGET_STAGE_SECONDS = 0.1


def staleness(every: str) -> tuple[float, int, int]:
    """(mean, max, days): the staleness of an answer as of every day FIRST..LAST_DAY
    with cutoffs every `every` from 2013 on."""
    from timoe_core.model.point_in_time import staleness_days
    from timoe_core.timeslices import period_ends

    cutoffs = period_ends(date(2013, 1, 1), LAST_DAY, every)  # type: ignore[arg-type]
    values, k, day = [], 0, FIRST_DAY
    while day <= LAST_DAY:
        while k + 1 < len(cutoffs) and cutoffs[k + 1] <= day:
            k += 1
        values.append(staleness_days(day, [cutoffs[k]]))
        day += timedelta(days=1)
    return sum(values) / len(values), max(values), len(values)


def router_stage_cost(root: Path, *, years: int, tokens_per_year: int, repeats: int
                      ) -> tuple[Figures, str]:
    from tests.helpers import make_data_dir, make_expert_runs
    from timoe_core.config import TrainRouterConfig
    from timoe_core.recipes import train_router

    span = range(2013, 2013 + years)
    data = make_data_dir(root, years=span, tokens_per_year=tokens_per_year, seq_len=32,
                         vocab_size=128, doc_dates="spread", val_tokens_per_year=0)
    labels = [f"{y}-{y + 1}" for y in span[::2]]
    make_expert_runs(root / "experts", labels,
                     tokenizer={"name": "gpt2", "vocab_size": 128, "eot_token": 127})
    common = {"experts": [root / "experts"], "data": data, "batch_size": 8, "device": "cpu",
              "log_every": 10_000}
    configs = {every: TrainRouterConfig(**common, cutoff_every=every)
               for every in ("year", "month")}

    def train(every: str) -> Any:
        return lambda out: quiet(train_router, configs[every].model_copy(update={"out": out}))

    stages = {}
    for every in configs:  # the warm-up, counted
        out = root / f"count-{every}"
        train(every)(out)
        stages[every] = len(json.loads((out / "timoe.json").read_text())["router_snapshots"])
    sides = {every: timed_runs(root, every, train(every)) for every in configs}
    rounds = interleaved_rounds(sides, repeats, warmup=0)
    extra = stages["month"] - stages["year"]
    if extra <= 0:
        raise ValueError(f"{years} years of {tokens_per_year} tokens give no more month stages "
                         "than year stages: give at least 4 years, 8 windows a month")
    per_stage = (rounds.median("month") - rounds.median("year")) / extra
    f: Figures = {
        "router_year_stages": figure(stages["year"], "stages"),
        "router_month_stages": figure(stages["month"], "stages"),
        "router_year_seconds": figure(round(rounds.median("year"), 4), "s"),
        "router_month_seconds": figure(round(rounds.median("month"), 4), "s",
                                       "router_year_seconds"),
        "router_seconds_per_extra_stage": figure(round(per_stage, 4), "s", None,
                                                 TARGET_STAGE_SECONDS, "<="),
        "router_144_stages_fixed_seconds": figure(round(144 * per_stage, 2), "s"),
    }
    text = (f"[router] learned-avg over {len(labels)} random tiny experts, {years} years of "
            f"{tokens_per_year} tokens, {repeats} rounds: year {stages['year']} stages "
            f"{rounds.median('year'):.2f} s (rounds {fmt_runs(rounds.seconds['year'], digits=2)})"
            f", month {stages['month']} stages {rounds.median('month'):.2f} s (rounds "
            f"{fmt_runs(rounds.seconds['month'], digits=2)}): {per_stage * 1000:.1f} ms per "
            f"extra stage, {144 * per_stage:.1f} s for 144")
    return f, text


def run(quick: bool = False, *, years: int = 4, tokens_per_year: int = 8 * 33 * 24,
        repeats: int | None = None) -> Figures:
    repeats = repeats or (3 if quick else 5)
    f: Figures = {}
    means = {}
    for every in ("year", "quarter", "month"):
        mean, worst, days = staleness(every)
        means[every] = mean
        target = (TARGET_MONTHLY_DAYS, "<=") if every == "month" else (None, None)
        f[f"staleness_{every}_mean_days"] = figure(round(mean, 2), "days", None, *target)
        f[f"staleness_{every}_max_days"] = figure(worst, "days")
        print(f"[staleness] cutoffs every {every}: mean {mean:.1f} days over {days} query "
              f"days {FIRST_DAY}..{LAST_DAY} (range 0..{worst})")
    f["staleness_days_counted"] = figure(days, "days")
    f["staleness_month_to_year"] = figure(round(means["month"] / means["year"], 4), "x",
                                          "staleness_year_mean_days")
    with tempfile.TemporaryDirectory(prefix="timoe-bench-cutoffs-") as tmp:
        g, text = router_stage_cost(Path(tmp), years=years, tokens_per_year=tokens_per_year,
                                    repeats=repeats)
    print(text)
    return f | g


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (3)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    figures = run(args.quick)
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
