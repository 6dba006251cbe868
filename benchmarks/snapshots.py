"""Snapshot kinds: their compute, their quality and the storage of every artefact kind.

    python -m benchmarks.snapshots [--quick] [--json FILE] [--only compute,quality,storage]

1. Compute. A dense `--all-years` series over 24 years of synthetic random tokens: 24
   chronological stages, as many as the months of a 2-year slice with monthly cutoffs
   (a stage is a stage: the loop does not know what a period is), each of
   `--steps-per-stage` steps. Three sides on the same main-run steps, interleaved in
   rounds (order rotated, medians, per-round ratios; see common.py): `--snapshot-kind
   average` (23 averaged snapshots, no extra step), `--snapshot-kind decay` (23 decay
   branches of decay_fraction of their stage, each after a checkpoint), and one
   unstaged run (`--snapshots none`, `--max-steps` = the staged run's main steps and
   final decay). Target: average / unstaged <= 1.10.
2. Quality. A dense series on the built-in corpus of 2013-2018 at the demo's size (200
   documents a year, 2 layers x 128, 64 tokens, batch 8, 40 steps a stage, lr 3e-3): at
   every year end but the last, the snapshot's held-out perplexity on the validation windows of
   every year up to that year end, for the decay-branch snapshot, the averaged snapshot
   (one run per horizon in `--fractions`) and the raw stable-phase weights there (the
   decay run's pre-branch checkpoint). Figures: the mean over the stage ends, with a
   95% t-interval of the per-stage ratios to decay. Target: averaged within 3% of
   decay (ratio <= 1.03). Then the same with monthly cutoffs (`snapshots_quality_monthly_*`):
   one pass over each month's new windows a stage, as the monthly demo trains, and the
   perplexity of every month-end snapshot on the held-out text dated up to that month end.
3. Storage. Bytes of every artefact kind at gpt2-124m size, computed from the parameter
   counts (no 124M model is trained): an expert's final weights; a snapshot, a router
   snapshot and an adapted expert, each in float32 and bfloat16 (and an adapted expert
   of `coadapt --adapted-weights blocks`, a delta without the token embedding); a
   trainer checkpoint;
   and how many of each a build over 2013-2024 with 2-year slices writes with yearly
   and monthly cutoffs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, Literal

import torch

from benchmarks.common import Figures, Measured, figure, fmt_runs, interleaved_rounds, write_json
from benchmarks.staged import counting, quiet

TARGET_COMPUTE = 1.10
TARGET_QUALITY = 1.03
STAGES = 24  # the months of a 2-year slice
FIRST_YEAR = 2001


# ------------------------------------------------------------------- compute


def compute(root: Path, *, seq_len: int, batch: int, steps_per_stage: int, repeats: int,
            vocab_size: int, model: dict[str, Any]) -> Figures:
    from tests.helpers import make_data_dir
    from timoe_core.config import TrainExpertConfig
    from timoe_core.train.expert import train_expert
    from timoe_core.train.expert_plan import plan_expert_run
    from timoe_core.train.trainer import Trainer

    years = list(range(FIRST_YEAR, FIRST_YEAR + STAGES))
    data = make_data_dir(root, years=years, tokens_per_year=batch * steps_per_stage
                         * (seq_len + 1), seq_len=seq_len, val_tokens_per_year=0,
                         pattern="random", vocab_size=vocab_size, start_year=years[0],
                         end_year=years[-1], name="compute-data")
    common = dict(data=data, all_years=True, seq_len=seq_len, batch_size=batch, device="cpu",
                  log_every=1000, **model)
    # (each "year" stands for a month: a stage per year, as cutoffs every month make)
    average = TrainExpertConfig(**common, steps_per_stage=steps_per_stage, cutoff_every="year",
                                snapshot_kind="average", out=root / "plan")
    plan = plan_expert_run(average, world_size=1, check_run_dir=False)
    configs = {
        "average": average,
        "decay": average.model_copy(update={"snapshot_kind": "decay"}),
        "unstaged": TrainExpertConfig(**common, snapshots="none", max_steps=plan.total_steps),
    }

    def train(name: str) -> Callable[[Path], Any]:
        return lambda out: train_expert(configs[name].model_copy(update={"out": out}))

    # Every round counts the optimizer steps (`Trainer.apply`) and the snapshots written
    # (a counter costs nothing next to a step), so no untimed run is needed.
    steps: dict[str, int] = {}
    snapshots: dict[str, int] = {}
    # CPU seconds of each run beside its wall time: on a shared machine the wall time of
    # a run swings with other processes' load, its CPU time much less
    cpu: dict[str, list[float]] = {}
    calls = [0]

    def side(name: str) -> Callable[[], Measured]:
        def timed() -> Measured:
            calls[0] += 1
            out = root / f"{name}-{calls[0]}"
            counts: dict[str, int] = {}
            with counting(Trainer, "apply", lambda *a, **k: 1, counts, "steps"):
                t0, c0 = time.perf_counter(), time.process_time()
                quiet(train(name), out)
                took = time.perf_counter() - t0
            cpu.setdefault(name, []).append(time.process_time() - c0)
            steps[name] = counts["steps"]
            snapshots[name] = len(list(out.glob("snapshots/*/snapshot.json")))
            shutil.rmtree(out, ignore_errors=True)
            return Measured(took)
        return timed

    sides = {name: side(name) for name in configs}
    rounds = interleaved_rounds(sides, repeats, warmup=0)
    f: Figures = {
        "snapshots_unstaged_seconds": figure(round(rounds.median("unstaged"), 4), "s"),
        "snapshots_stages": figure(len(plan.stages), "stages"),
        "snapshots_main_steps": figure(steps["unstaged"], "steps"),
    }
    f["snapshots_unstaged_cpu_seconds"] = figure(round(statistics.median(cpu["unstaged"]), 4),
                                                 "s")
    for kind in ("average", "decay"):
        f[f"snapshots_{kind}_cpu_ratio_to_unstaged"] = figure(
            round(statistics.median(a / b for a, b in zip(cpu[kind], cpu["unstaged"])), 4),
            "x", "snapshots_unstaged_cpu_seconds")
        f[f"snapshots_{kind}_seconds"] = figure(round(rounds.median(kind), 4), "s")
        f[f"snapshots_{kind}_ratio_to_unstaged"] = figure(
            round(rounds.median_ratio(kind, "unstaged"), 4), "x", "snapshots_unstaged_seconds",
            *((TARGET_COMPUTE, "<=") if kind == "average" else (None, None)))
        f[f"snapshots_{kind}_extra_steps"] = figure(steps[kind] - steps["unstaged"], "steps",
                                                    "snapshots_main_steps")
        f[f"snapshots_{kind}_snapshots"] = figure(snapshots[kind], "snapshots")
    print(f"[compute] dense series over {STAGES} years = {STAGES} stages (as many as the "
          f"months of a 2-year slice) x {steps_per_stage} steps, batch {batch} x {seq_len}, "
          f"vocab {vocab_size}, {repeats} rounds")
    for name in configs:
        print(f"  {name:>9}: {rounds.median(name):7.2f} s (rounds "
              f"{fmt_runs(rounds.seconds[name], digits=2)}), {steps[name]} optimizer steps, "
              f"{snapshots[name]} snapshots")
    for kind in ("average", "decay"):
        print(f"  {kind} / unstaged: {f[f'snapshots_{kind}_ratio_to_unstaged']['value']:.3f}x "
              f"wall, {f[f'snapshots_{kind}_cpu_ratio_to_unstaged']['value']:.3f}x CPU (runs "
              f"{fmt_runs(cpu[kind], digits=1)} s against {fmt_runs(cpu['unstaged'], digits=1)})")
    return f


# ------------------------------------------------------------------- quality


def _perplexity(weights: Path, config: Any, data: Path, years: list[int], seq_len: int,
                upto: date, bfloat16: bool = False) -> tuple[float, int]:
    """exp(mean token loss) of the model at `weights` (rounded to bfloat16, as
    `--snapshot-dtype bfloat16` stores them, where `bfloat16`) on the val windows of
    `years` dated up to `upto`."""
    from timoe_core.data.windows import TokenWindows
    from timoe_core.model.gpt import GPT
    from timoe_core.model.weights import load_weights_into

    model = load_weights_into(GPT(config, init_weights=False), weights).eval()
    if bfloat16:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16))
    windows = TokenWindows(data, "val", years, seq_len).dated(None, upto)
    if len(windows) == 0:  # no held-out text dated by then (a tiny corpus's first months)
        return math.nan, 0
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), 16):
            rows = windows.batch(range(start, min(start + 16, len(windows))))[0]
            _, loss = model(rows[:, :-1], rows[:, 1:])
            total += float(loss) * rows.size(0)
            n += rows.size(0)
    return math.exp(total / n), n


def _t95(n: int) -> float:
    table = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
             10: 2.23, 11: 2.20, 12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04}
    return table.get(n, table[max(k for k in table if k <= n)] if n < 31 else 1.96)


def quality(root: Path, *, docs_per_year: int, steps_per_stage: int | None,
            fractions: list[float], model: dict[str, Any], seq_len: int, batch: int,
            lr: float, end_year: int, cutoff_every: Literal["year", "month"] = "year"
            ) -> Figures:
    """Yearly: `steps_per_stage` steps a year. Monthly: one pass over each month's new
    windows (steps_per_stage None), as the monthly demo trains, with a snapshot at every
    month end; its figures are named snapshots_quality_monthly_*."""
    from timoe_core.config import PrepareDataConfig, TrainExpertConfig
    from timoe_core.data.prepare import prepare_data
    from timoe_core.model.run_info import read_run_info
    from timoe_core.train.expert import train_expert

    data = root / "quality-data"
    if not data.is_dir():
        quiet(prepare_data, PrepareDataConfig(source="builtin", out=data, seq_len=seq_len,
                                              val_fraction=0.1, workers=1, end_year=end_year,
                                              builtin_docs_per_year=docs_per_year, seed=0))
    common = dict(data=data, all_years=True, seq_len=seq_len, batch_size=batch, lr=lr,
                  device="cpu", log_every=1000, steps_per_stage=steps_per_stage,
                  cutoff_every=cutoff_every, snapshot_dtype="float32", **model)
    runs = {"decay": root / "q-decay"}
    # the decay run keeps every pre-branch checkpoint: the raw stable-phase weights
    quiet(train_expert, TrainExpertConfig(**common, snapshot_kind="decay", out=runs["decay"],
                                          keep_checkpoints=10_000))
    for frac in fractions:
        runs[f"average-{frac:g}"] = root / f"q-average-{frac:g}"
        quiet(train_expert, TrainExpertConfig(**common, snapshot_kind="average",
                                              snapshot_average_fraction=frac,
                                              out=runs[f"average-{frac:g}"]))
    info = read_run_info(runs["decay"])
    config = info.model_config_
    checkpoints = {int(p.name.removeprefix("step-")): p
                   for p in (runs["decay"] / "checkpoints").glob("step-*")}
    # each averaged snapshot is also scored rounded to bfloat16 (its storage by default)
    averages = [name for name in runs if name.startswith("average")]
    ppl: dict[str, list[float]] = {name: [] for name in
                                   ["raw", *runs, *(f"{a}-bf16" for a in averages)]}
    stage_ends: list[str] = []
    end = 0
    for snap in info.snapshots:
        cutoff = snap["data_cutoff"]
        meta = json.loads((runs["decay"] / snap["path"] / "snapshot.json").read_text())
        end += meta["stage_steps"]
        years = [y for y in range(int(info.slice_label[:4]), int(cutoff[:4]) + 1)]
        upto = date.fromisoformat(cutoff)
        here = {name: _perplexity(run / snap["path"], config, data, years, seq_len, upto)[0]
                for name, run in runs.items()}
        if math.isnan(here["decay"]):
            continue  # nothing held out up to this cutoff: no figure
        here["raw"] = _perplexity(checkpoints[end], config, data, years, seq_len, upto)[0]
        for name in averages:
            here[f"{name}-bf16"] = _perplexity(runs[name] / snap["path"], config, data, years,
                                               seq_len, upto, bfloat16=True)[0]
        for name, value in here.items():
            ppl[name].append(value)
        stage_ends.append(cutoff)
    n = len(stage_ends)
    prefix = "snapshots_quality_" + ("monthly_" if cutoff_every == "month" else "")
    f: Figures = {f"{prefix}stage_ends": figure(n, "snapshots"),
                  f"{prefix}decay_ppl": figure(round(statistics.mean(ppl["decay"]), 3), "ppl")}
    steps = (f"{steps_per_stage} steps" if steps_per_stage else
             f"one pass ({end / (len(info.snapshots) + 1):.1f} steps on average)")
    print(f"[quality] dense series on the built-in corpus ({docs_per_year} docs a year), "
          f"{len(info.snapshots) + 1} stages ({cutoff_every}) x {steps} of batch {batch}; "
          f"held-out perplexity of each {cutoff_every}-end snapshot on the text up to it "
          f"(mean over {n} {cutoff_every} ends, 95% interval of the ratio to decay)")
    print(f"  {'decay':>14}: {statistics.mean(ppl['decay']):8.3f}")
    for name in [k for k in ppl if k != "decay"]:
        ratios = [a / b for a, b in zip(ppl[name], ppl["decay"])]
        mean = statistics.mean(ratios)
        half = _t95(n - 1) * statistics.stdev(ratios) / math.sqrt(n) if n > 1 else float("nan")
        key = prefix + name.replace("-", "_").replace(".", "")
        f[f"{key}_ppl"] = figure(round(statistics.mean(ppl[name]), 3), "ppl")
        f[f"{key}_ratio_to_decay"] = figure(
            round(mean, 4), "x", f"{prefix}decay_ppl",
            *((TARGET_QUALITY, "<=") if name.startswith("average") else (None, None)))
        f[f"{key}_ratio_interval"] = figure(round(half, 4), "+/-")
        # the ratio of the mean perplexities weighs the first stage ends most (fewest
        # steps, highest perplexity), where an average of fast-moving weights lags
        of_means = statistics.mean(ppl[name]) / statistics.mean(ppl["decay"])
        f[f"{key}_ratio_of_mean_ppl"] = figure(round(of_means, 4), "x")
        each = (f"per {cutoff_every} end: {', '.join(f'{r:.3f}' for r in ratios)}"
                if n <= 12 else f"range {min(ratios):.3f}..{max(ratios):.3f}, first 12: "
                f"{statistics.mean(ratios[:12]):.4f}, later: {statistics.mean(ratios[12:]):.4f}")
        print(f"  {name:>14}: {statistics.mean(ppl[name]):8.3f}  ratio to decay "
              f"{mean:.4f} +/- {half:.4f}, of the means {of_means:.4f}  ({each})")
    return f


# ------------------------------------------------------------------- storage

GB = 1e9


def storage() -> Figures:
    """Bytes per artefact kind at gpt2-124m size, computed, and the counts per build."""
    from timoe_core.model.gpt import GPT, pad_vocab, preset_config
    from timoe_core.model.router import Router, RouterConfig

    with torch.device("meta"):
        gpt = GPT(preset_config("gpt2-124m", vocab_size=pad_vocab(50257)), init_weights=False)
        params = sum(p.numel() for p in gpt.parameters())  # lm_head is wte: counted once
        labels = [f"{y}-{y + 1}" for y in range(2013, 2025, 2)]
        router = Router(RouterConfig(slice_labels=labels, vocab_size=pad_vocab(50257)))
        router_params = sum(p.numel() for p in router.parameters())
        embedding = gpt.wte.weight.numel()
    sizes = {
        "expert_final": params * 4,
        "snapshot_float32": params * 4,
        "snapshot_bfloat16": params * 2,
        "router_snapshot_float32": router_params * 4,
        "router_snapshot_bfloat16": router_params * 2,
        "adapted_expert_float32": params * 4,
        "adapted_expert_bfloat16": params * 2,
        # coadapt --adapted-weights blocks: a delta from its parent without the embedding
        "adapted_expert_blocks_bfloat16": (params - embedding) * 2,
        # weights + AdamW's two moments (fp32), + the running average (kind average)
        "trainer_checkpoint_decay": params * 12,
        "trainer_checkpoint_average": params * 16,
    }
    slices, years = 6, 12
    counts = {  # per build over 2013-2024 with 2-year slices
        "yearly": {"expert_final": slices, "snapshot": slices * (2 - 1),
                   "router_snapshot": years, "adapted_expert": years},
        "monthly": {"expert_final": slices, "snapshot": slices * (24 - 1),
                    "router_snapshot": years * 12, "adapted_expert": years * 12},
    }
    f: Figures = {"storage_gpt2_124m_params": figure(params, "params"),
                  "storage_router_params": figure(router_params, "params")}
    for k, v in sizes.items():
        f[f"storage_{k}_bytes"] = figure(v, "bytes")
    print(f"[storage] gpt2-124m: {params:,} parameters (lm_head tied); router over "
          f"{slices} slices: {router_params:,}")
    for k, v in sizes.items():
        print(f"  {k:>28}: {v / GB:7.3f} GB")
    for every, c in counts.items():
        # (router snapshots counted whole: a delta's changed rows depend on the data)
        for snap_dtype, adapt in (("float32", "float32"), ("bfloat16", "bfloat16"),
                                  ("bfloat16", "blocks_bfloat16")):
            total = (c["expert_final"] * sizes["expert_final"]
                     + c["snapshot"] * sizes[f"snapshot_{snap_dtype}"]
                     + c["router_snapshot"] * sizes[f"router_snapshot_{snap_dtype}"]
                     + c["adapted_expert"] * sizes[f"adapted_expert_{adapt}"])
            key = snap_dtype if adapt == snap_dtype else f"{snap_dtype}_adapted_{adapt}"
            f[f"storage_{every}_{key}_total_bytes"] = figure(total, "bytes")
            print(f"  {every:>7} ({key}): {c['expert_final']} finals, {c['snapshot']} "
                  f"snapshots, {c['router_snapshot']} router snapshots, {c['adapted_expert']} "
                  f"adapted experts: {total / GB:7.2f} GB")
        for k, v in c.items():
            f[f"storage_{every}_{k}_count"] = figure(v, "files")
    y, m = f["storage_yearly_float32_total_bytes"]["value"], f[
        "storage_monthly_bfloat16_total_bytes"]["value"]
    f["storage_monthly_bfloat16_ratio_to_yearly_float32"] = figure(
        round(m / y, 3), "x", "storage_yearly_float32_total_bytes")
    b = f["storage_monthly_bfloat16_adapted_blocks_bfloat16_total_bytes"]["value"]
    f["storage_monthly_bfloat16_adapted_blocks_ratio_to_yearly_float32"] = figure(
        round(b / y, 3), "x", "storage_yearly_float32_total_bytes")
    return f


# ------------------------------------------------------------------- groups

PARTS = ("compute", "quality", "storage")


def run(quick: bool = False, *, parts: tuple[str, ...] = PARTS, seq_len: int | None = None,
        batch: int = 8, steps_per_stage: int | None = None, repeats: int | None = None,
        vocab_size: int = 2048, n_embd: int | None = None, n_layer: int | None = None,
        n_head: int | None = None, docs_per_year: int | None = None,
        quality_steps: int | None = None, fractions: list[float] | None = None,
        end_year: int | None = None, quality_batch: int | None = None) -> Figures:
    """Every part. --quick: 2 rounds, and the quality runs at 20 steps a stage of batch 4
    (the demo's stages are 40 of batch 8) with two horizons, the monthly one over
    2013-2015."""
    if quick:
        quality_steps = quality_steps or 20
        quality_batch = quality_batch or 4
        fractions = fractions or [0.03, 0.1]
    seq_len = seq_len or 128
    steps_per_stage = steps_per_stage or 8
    repeats = repeats or (2 if quick else 5)
    model = {"preset": "tiny", "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head}
    f: Figures = {}
    print(f"snapshots: {torch.get_num_threads()} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="timoe-bench-snapshots-") as tmp:
        root = Path(tmp)
        if "compute" in parts:
            f |= compute(root, seq_len=seq_len, batch=batch, steps_per_stage=steps_per_stage,
                         repeats=repeats, vocab_size=vocab_size, model=model)
        if "quality" in parts:
            demo = {"n_layer": n_layer or 2, "n_head": n_head or 4, "n_embd": n_embd or 128}
            for every in ("year", "month"):  # month: one pass a month, as the demo
                # (--quick: monthly over 2013-2015, 35 month ends, to stay short)
                last = end_year or (2015 if quick and every == "month" else 2018)
                f |= quality(root / every, docs_per_year=docs_per_year or 200,
                             steps_per_stage=(quality_steps or 40) if every == "year" else None,
                             fractions=fractions or [0.1, 0.2, 0.4], model=demo,
                             seq_len=64 if seq_len == 128 else seq_len,
                             batch=quality_batch or batch, lr=3e-3,
                             end_year=last, cutoff_every=every)
    if "storage" in parts:
        f |= storage()
    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (2)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--only", default=",".join(PARTS), help="compute,quality,storage")
    ap.add_argument("--steps-per-stage", type=int, default=None, help="compute: default 8")
    ap.add_argument("--seq-len", type=int, default=None, help="compute: default 128")
    ap.add_argument("--quality-steps", type=int, default=None, help="quality: default 40")
    ap.add_argument("--fractions", default=None, help="quality: default 0.1,0.2,0.4")
    ap.add_argument("--quality-batch", type=int, default=None, help="quality: default 8")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 5; quick 2)")
    a = ap.parse_args(argv)
    parts = tuple(p for p in a.only.split(",") if p)
    if set(parts) - set(PARTS):
        raise SystemExit(f"--only: use some of {', '.join(PARTS)}")
    fr = [float(x) for x in a.fractions.split(",")] if a.fractions else None
    f = run(a.quick, parts=parts, steps_per_stage=a.steps_per_stage, repeats=a.repeats,
            seq_len=a.seq_len,
            quality_steps=a.quality_steps, fractions=fr, quality_batch=a.quality_batch)
    if a.json is not None:
        write_json(a.json, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
