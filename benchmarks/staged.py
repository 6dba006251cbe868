"""Staged (point-in-time) training against the unstaged runs it replaces, on the same tokens.

    python -m benchmarks.staged [--quick] [--json FILE] [--steps-per-stage N] [--repeats R]

Both sides are the library's own entry points (`train_expert`, `train_router`), each
run into a fresh folder, interleaved in rounds (order rotated, medians, per-round
ratios; see common.py), on one synthetic data dir of random tokens:

1. Expert training, one 2-year slice (2013-2014: two chronological stages):
   staged, `--snapshots stages --snapshot-kind decay` (stage 2013 reads 2013 only, then a decay
   branch saves the 2013 snapshot, the main run goes on through 2014 and the final
   decay) against `--snapshots none` with `--max-steps` = the staged run's main steps
   (both stages and the final decay): the same main-run tokens. Target: staged / none
   <= 1.10 (branches, pre-branch checkpoint and snapshot writes included). The
   optimizer steps of each side are counted (`Trainer.apply`), so the share of the
   decay branches (branch steps / main steps) is measured, beside the expected
   (n_stages - 1) x decay_fraction / n_stages.
2. Router training, learned-avg over two experts (2013-2014, 2015-2016) on data of
   2013-2016: staged (`--policy point-in-time`, the default: one stage per artefact
   cutoff, 2013 ... 2016, each on its year's windows with `--steps-per-stage N`, over
   staged experts with their snapshots) against the unstaged router (`--policy
   inclusive`, one run over the same four years with `--max-steps` = the staged steps
   in all, over `--snapshots none` experts of the same shape and budget). Both routers
   see as many eligible experts per window (one in 2013-2014, two in 2015-2016), so
   the two sides do the same work per step. Each
   stage reads its windows twice (two epochs), so each builds a log-prob cache; the
   frozen experts' forward passes are counted (`logprobs.target_log_probs`, windows x
   experts) against the training windows x their usable experts: 1.0 means every
   window went through each frozen expert once across all stages (target == 1; 2.0
   would mean no cache).

Counting runs once per side before the timed rounds (they are the warm-up), so the
timed calls run unpatched.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    Figures,
    Measured,
    Rounds,
    figure,
    fmt_runs,
    interleaved_rounds,
    write_json,
)

TARGET_RATIO = 1.10
YEARS_EXPERT = (2013, 2014)
YEARS_ROUTER = (2013, 2014, 2015, 2016)


@contextlib.contextmanager
def counting(owner: Any, attr: str, tally: Callable[..., int], counts: dict[str, int],
             key: str) -> Iterator[None]:
    """While inside, every call of `owner.attr` adds `tally(*args, **kwargs)` to
    counts[key] (the call itself is unchanged)."""
    original = getattr(owner, attr)  # bound, for a classmethod
    raw = vars(owner)[attr]  # what to put back (a classmethod stays one)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[key] = counts.get(key, 0) + tally(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(owner, attr, wrapper)
    try:
        yield
    finally:
        setattr(owner, attr, raw)


def quiet(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) with the training log (progress lines, stage messages) kept off the
    console."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args)


def timed_runs(root: Path, name: str, train: Callable[[Path], Any]) -> Callable[[], Measured]:
    """A side for `interleaved_rounds`: train into a fresh folder, time it, delete it
    (untimed)."""
    calls = [0]

    def side() -> Measured:
        calls[0] += 1
        out = root / f"{name}-{calls[0]}"
        t0 = time.perf_counter()
        quiet(train, out)
        took = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        return Measured(took)

    return side


# ------------------------------------------------------------------ figures


def expert_figures(rounds: Rounds, staged_steps: int, unstaged_steps: int, stages: int,
                   decay_fraction: float) -> Figures:
    """The expert-training figures from the rounds and the counted optimizer steps
    (staged: main + branch steps; unstaged: main steps)."""
    ratio = rounds.median_ratio("staged", "unstaged")
    branch = staged_steps - unstaged_steps
    share = branch / unstaged_steps
    return {
        "staged_expert_seconds": figure(round(rounds.median("staged"), 6), "s"),
        "unstaged_expert_seconds": figure(round(rounds.median("unstaged"), 6), "s"),
        "staged_expert_ratio_to_unstaged": figure(round(ratio, 4), "x", "unstaged_expert_seconds",
                                                  TARGET_RATIO, "<="),
        "staged_expert_stages": figure(stages, "stages"),
        "staged_expert_main_steps": figure(unstaged_steps, "steps"),
        "staged_expert_branch_steps": figure(branch, "steps"),
        "staged_expert_branch_step_fraction": figure(round(share, 4), "fraction",
                                                     "staged_expert_main_steps"),
        "staged_expert_branch_fraction_expected": figure(
            round((stages - 1) * decay_fraction / stages, 4), "fraction"),
        # What is not the branches' steps: pre-branch checkpoint, state copy and restore,
        # snapshot writes (and noise).
        "staged_expert_overhead_beyond_branches": figure(round(ratio - 1 - share, 4),
                                                         "fraction"),
        # The same in seconds per snapshot (a step at the unstaged run's mean): a fixed
        # cost per snapshot, whatever the stage's length, so its share falls as stages grow.
        "staged_expert_fixed_seconds_per_snapshot": figure(round(
            (rounds.median("staged") - rounds.median("unstaged") * (1 + share))
            / max(1, stages - 1), 3), "s"),
    }


def router_figures(rounds: Rounds, counts: dict[str, dict[str, int]], stages: int,
                   steps: int) -> Figures:
    """The router-training figures from the rounds and the counting runs: per side the
    frozen experts' forwards (windows x experts), the training windows x their usable
    experts, the windows read, the distinct windows and the caches opened."""
    ratio = rounds.median_ratio("staged", "unstaged")
    s, u = counts["staged"], counts["unstaged"]
    return {
        "staged_router_seconds": figure(round(rounds.median("staged"), 6), "s"),
        "unstaged_router_seconds": figure(round(rounds.median("unstaged"), 6), "s"),
        "staged_router_ratio_to_unstaged": figure(round(ratio, 4), "x", "unstaged_router_seconds",
                                                  TARGET_RATIO, "<="),
        "staged_router_stages": figure(stages, "stages"),
        "staged_router_steps": figure(steps, "steps"),
        "staged_router_windows_read_per_window": figure(
            round(s["windows_read"] / s["windows"], 4), "x"),
        "staged_router_caches_built": figure(s["caches"], "caches"),
        "staged_router_expert_windows": figure(s["expert_windows"], "windows"),
        "staged_router_expert_forwards": figure(s["forwards"], "windows"),
        "staged_router_expert_forwards_per_window": figure(
            round(s["forwards"] / s["expert_windows"], 4), "x", "staged_router_expert_windows",
            1.0, "=="),
        "unstaged_router_expert_forwards_per_window": figure(
            round(u["forwards"] / u["expert_windows"], 4), "x"),
        # The extra seconds per stage beyond the first: what a stage costs whatever its
        # length (its run dir and checkpoint, router snapshot, cache files, the artefacts
        # it loads), so its share falls as stages grow.
        "staged_router_seconds_per_extra_stage": figure(round(
            (rounds.median("staged") - rounds.median("unstaged")) / max(1, stages - 1), 3), "s"),
    }


# ------------------------------------------------------------------- groups


def expert_training(root: Path, *, seq_len: int, batch: int, steps_per_stage: int,
                    repeats: int, vocab_size: int, model: dict[str, Any]) -> Figures:
    from tests.helpers import make_data_dir
    from timoe_core.config import TrainExpertConfig
    from timoe_core.train.expert import train_expert
    from timoe_core.train.expert_plan import plan_expert_run
    from timoe_core.train.trainer import Trainer

    per_year = batch * steps_per_stage  # one pass over its own year per stage
    data = make_data_dir(root, years=YEARS_EXPERT, tokens_per_year=per_year * (seq_len + 1),
                         seq_len=seq_len, val_tokens_per_year=0, pattern="random",
                         vocab_size=vocab_size, name="expert-data")
    common = dict(data=data, year=YEARS_EXPERT[0], seq_len=seq_len, batch_size=batch,
                  device="cpu", **model)
    staged = TrainExpertConfig(**common, steps_per_stage=steps_per_stage, cutoff_every="year",
                               snapshot_kind="decay", out=root / "plan")
    plan = plan_expert_run(staged, world_size=1, check_run_dir=False)
    unstaged = TrainExpertConfig(**common, snapshots="none", max_steps=plan.total_steps)
    configs = {"staged": staged, "unstaged": unstaged}

    def train(name: str) -> Callable[[Path], Any]:
        return lambda out: train_expert(configs[name].model_copy(update={"out": out}))

    steps: dict[str, int] = {}
    for name in configs:  # counted, untimed: the warm-up
        counts: dict[str, int] = {}
        with counting(Trainer, "apply", lambda *a, **k: 1, counts, "steps"):
            quiet(train(name), root / f"count-{name}")
        steps[name] = counts["steps"]
    sides = {name: timed_runs(root, name, train(name)) for name in configs}
    rounds = interleaved_rounds(sides, repeats, warmup=0)
    f = expert_figures(rounds, steps["staged"], steps["unstaged"], len(plan.stages),
                       staged.decay_fraction)
    print(f"[expert] slice 2013-2014, {len(plan.stages)} stages x {steps_per_stage} steps, "
          f"batch {batch} x {seq_len} tokens, vocab {vocab_size}, {repeats} rounds")
    for name in configs:
        print(f"  {name:>9}: {rounds.median(name):7.2f} s  (rounds "
              f"{fmt_runs(rounds.seconds[name], digits=2)}), {steps[name]} optimizer steps")
    print(f"  staged / unstaged: {f['staged_expert_ratio_to_unstaged']['value']:.3f}x "
          f"(target <= {TARGET_RATIO}); branch steps / main steps "
          f"{f['staged_expert_branch_step_fraction']['value']:.1%} (expected about "
          f"{f['staged_expert_branch_fraction_expected']['value']:.1%}); fixed cost per "
          f"snapshot {f['staged_expert_fixed_seconds_per_snapshot']['value']:.2f} s")
    return f


def router_training(root: Path, *, seq_len: int, batch: int, steps_per_stage: int,
                    repeats: int, vocab_size: int, model: dict[str, Any]) -> Figures:
    from tests.helpers import make_data_dir
    from timoe_core.config import MixtureOptions, TrainExpertConfig, TrainRouterConfig
    from timoe_core.data.windows import TokenWindows
    from timoe_core.model import mixture_compute as mixture_module
    from timoe_core.model.mixture import TiMoE
    from timoe_core.recipes import train_router
    from timoe_core.recipes.learned_avg import LearnedAvgTask
    from timoe_core.train.expert import train_expert
    from timoe_core.train.logprob_cache import LogProbCache

    # Two epochs of each year's windows per stage: each stage builds and reads a cache.
    per_year = batch * steps_per_stage // 2
    data = make_data_dir(root, years=YEARS_ROUTER, tokens_per_year=per_year * (seq_len + 1),
                         seq_len=seq_len, val_tokens_per_year=0, pattern="random",
                         vocab_size=vocab_size, name="router-data")
    # Each router over the experts of its own pipeline: staged experts (each with its
    # first year's snapshot) for the staged router, `--snapshots none` experts of the
    # same shape and budget for the unstaged one. (The inclusive router over experts
    # with snapshots is refused today: TiMoE.from_expert_dirs gives its router a slot
    # per artefact rather than per slice.)
    experts = {"staged": root / "experts-staged", "unstaged": root / "experts-none"}
    for year in YEARS_ROUTER[::2]:
        budget = {"data": data, "year": year, "seq_len": seq_len, "batch_size": batch,
                  "device": "cpu", **model}
        quiet(train_expert, TrainExpertConfig(
            **budget, steps_per_stage=2, cutoff_every="year", snapshot_kind="decay",
            out=experts["staged"] / f"expert-{year}"))
        quiet(train_expert, TrainExpertConfig(
            **budget, snapshots="none", max_steps=5, out=experts["unstaged"] / f"expert-{year}"))
    windows = TokenWindows(data, "train", YEARS_ROUTER, seq_len)
    n_stages = len(YEARS_ROUTER)  # one per artefact cutoff: 2013, 2014 (final), 2015, 2016
    common = {"strategy": "learned-avg", "data": data, "batch_size": batch, "device": "cpu"}
    configs = {
        "staged": TrainRouterConfig(**common, experts=[experts["staged"]],
                                    steps_per_stage=steps_per_stage, cutoff_every="year"),
        "unstaged": TrainRouterConfig(**common, experts=[experts["unstaged"]],
                                      policy="inclusive", max_steps=n_stages * steps_per_stage),
    }

    def train(name: str) -> Callable[[Path], Any]:
        return lambda out: train_router(configs[name].model_copy(update={"out": out}))

    counts: dict[str, dict[str, int]] = {}
    for name, cfg in configs.items():  # counted, untimed: the warm-up
        c: dict[str, int] = {"forwards": 0, "windows_read": 0, "caches": 0}
        mix = TiMoE.from_expert_dirs(cfg.experts, options=MixtureOptions(policy=cfg.policy))
        c["windows"] = len(windows)
        c["expert_windows"] = sum(int((windows.window_years == y).sum())
                                  * len(mix.usable_artefacts(str(y))) for y in YEARS_ROUTER)
        with contextlib.ExitStack() as stack:
            stack.enter_context(counting(mixture_module, "target_log_probs",
                                         lambda expert, ids, *a: int(ids.size(0)), c, "forwards"))
            stack.enter_context(counting(LearnedAvgTask, "batch",
                                         lambda self, idx, *a: len(idx), c, "windows_read"))
            stack.enter_context(counting(LogProbCache, "open_or_build", lambda *a, **k: 1, c,
                                         "caches"))
            quiet(train(name), root / f"count-{name}")
        counts[name] = c
    sides = {name: timed_runs(root, name, train(name)) for name in configs}
    rounds = interleaved_rounds(sides, repeats, warmup=0)
    f = router_figures(rounds, counts, n_stages, n_stages * steps_per_stage)
    print(f"[router] learned-avg over experts 2013-2014, 2015-2016, "
          f"{n_stages} stages x {steps_per_stage} steps, batch {batch} x {seq_len}, "
          f"{per_year} windows a year, {repeats} rounds")
    for name in configs:
        c = counts[name]
        print(f"  {name:>9}: {rounds.median(name):7.2f} s  (rounds "
              f"{fmt_runs(rounds.seconds[name], digits=2)}); expert forwards "
              f"{c['forwards']} of {c['expert_windows']} window x expert pairs, "
              f"{c['windows_read']} windows read, {c['caches']} caches")
    print(f"  staged / unstaged: {f['staged_router_ratio_to_unstaged']['value']:.3f}x "
          f"(target <= {TARGET_RATIO}); frozen-expert forwards per window "
          f"{f['staged_router_expert_forwards_per_window']['value']:.2f} (target == 1); "
          f"{f['staged_router_seconds_per_extra_stage']['value']:.2f} s per extra stage")
    return f


def run(
    quick: bool = False,
    *,
    seq_len: int | None = None,
    batch: int = 8,
    steps_per_stage: int | None = None,
    repeats: int | None = None,
    vocab_size: int = 2048,
    n_embd: int | None = None,
    n_layer: int | None = None,
    n_head: int | None = None,
) -> Figures:
    """Both comparisons: the `tiny` preset (2 layers, 128 wide) on a synthetic vocabulary
    of `vocab_size`, fp32 on CPU."""
    # --quick runs fewer rounds, not shorter stages: a stage has a fixed cost (its run dir,
    # checkpoint, snapshot and cache files: `*_seconds_per_extra_stage`), and stages of a
    # tenth of a second, as 16 steps of 8 x 64 tokens are, would measure mostly that.
    # Five rounds even then: a staged run and its unstaged peer differ by a few percent,
    # less than one round's noise on a shared machine.
    seq_len = seq_len or 128
    steps_per_stage = steps_per_stage or 32
    repeats = repeats or (5 if quick else 7)
    model = {"preset": "tiny", "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head}
    sizes = {"seq_len": seq_len, "batch": batch, "steps_per_stage": steps_per_stage,
             "repeats": repeats, "vocab_size": vocab_size, "model": model}
    print(f"staged: {torch.get_num_threads()} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="timoe-bench-staged-") as tmp:
        root = Path(tmp)
        f = expert_training(root / "expert", **sizes)  # type: ignore[arg-type]
        f |= router_training(root / "router", **sizes)  # type: ignore[arg-type]
    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (5)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--seq-len", type=int, default=None, help="default 128")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps-per-stage", type=int, default=None, help="default 32")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 7; quick 5)")
    ap.add_argument("--vocab-size", type=int, default=2048)
    args = ap.parse_args(argv)
    figures = run(args.quick, seq_len=args.seq_len, batch=args.batch_size,
                  steps_per_stage=args.steps_per_stage, repeats=args.repeats,
                  vocab_size=args.vocab_size)
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
