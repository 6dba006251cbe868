"""Benchmark of `TiMoE.mixture_log_probs` against its eligible experts run alone.

    python -m benchmarks.mixture [--quick] [--json FILE] [--repeats N] [--batch B] [--seq T]

Six random experts of the `tiny` preset (2 layers, 128 wide, GPT-2 vocab 50304, the size
that trains on a CPU), one per default slice; one batch of B x T random tokens; fp32,
no_grad. In one run on the same batch:

(a) the eligible experts run alone: `expert.log_probs(x)` for each, one after the
    other (the sum of their times); (a') the same work with no allocation (logits into
    one reused buffer, log-softmax in place), the compute floor (a) contains;
(b) `mixture_log_probs(x, date)`: overhead (b - a) / a, target <= 10%;
    peak memory of (b) vs one expert's `log_probs(x)`, target <= 1.25x;
(c) a naive all-experts dense mixture (every expert run, masked ones kept in the
    (experts, B, T, V) stack with weight 0, then logsumexp): speed-up and memory ratio
    of (b) against it at query date 2016 (2 of 6 experts eligible);
and how (a), (b) time and (b) memory grow with the number of eligible experts 1..6
(query dates 2014, 2016, ..., 2024, the slice ends) and with the sequence length (at 2016); and (a),
(a'), (b) at 2016 with two experts of the `small` preset (6 layers, 384 wide), where
the per-vocabulary-entry mixing work is a smaller share of the experts' own.

Times: medians over rounds, the variants interleaved in each round (order rotated);
the overhead is the median of the per-round ratios. Memory: `peak_memory_bytes` (the
profiler's allocation events on CPU: live tensor bytes during the call, the output
included, the loaded weights not).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (  # noqa: F401  (peak_allocated_bytes: tests/test_mixture.py)
    Figures,
    figure,
    fmt_runs,
    interleaved_rounds,
    make_experts,
    peak_allocated_bytes,
    peak_memory_bytes,
    write_json,
)
from timoe_core.model.mixture import TiMoE
from timoe_core.timeslices import TimeSlicing

TARGET_OVERHEAD = 0.10
TARGET_MEMORY_RATIO = 1.25
SCALING_DATES = ["2014", "2016", "2018", "2020", "2022", "2024"]  # 1..6 experts usable (slice ends)


def naive_dense(mix: TiMoE, x: torch.Tensor, query_date: str) -> torch.Tensor:
    """Every expert run, its log-softmax stacked; ineligible ones kept with weight 0."""
    eligible = set(mix.eligible_experts(query_date))
    n = len(eligible)
    stack = torch.stack([mix.expert(s).log_probs(x) for s in mix.slices])  # (K, B, T, V)
    logw = torch.tensor(
        [-math.log(n) if s in eligible else float("-inf") for s in mix.slices],
        device=stack.device,
    ).view(-1, 1, 1, 1)
    return torch.logsumexp(stack + logw, dim=0)


def experts_alone(mix: TiMoE, x: torch.Tensor, query_date: str) -> list[torch.Tensor]:
    return [mix.expert(s).log_probs(x) for s in mix.eligible_experts(query_date)]


def experts_alone_floor(mix: TiMoE, x: torch.Tensor, query_date: str, buf: torch.Tensor) -> None:
    """The compute floor: each eligible expert's log-probs written into one reused buffer
    (no allocation, log-softmax in place): what is left of (a) without the allocator."""
    for s in mix.eligible_experts(query_date):
        expert = mix.expert(s)
        h = expert.hidden_states(x)
        out = torch.mm(h.view(-1, h.size(-1)), expert.lm_head.weight.t(), out=buf)
        torch.log_softmax(out, dim=-1, out=out)


def load_mixture(
    root: Path, preset: str, block_size: int, device: torch.device, **overrides: Any
) -> TiMoE:
    """Six random experts of `preset` (fields overridden), all loaded (loading is not
    what is measured)."""
    make_experts(root, preset, block_size=block_size, **overrides)
    mix = TiMoE.from_expert_dirs([root], strategy="avg", device=device)
    for s in mix.slices:
        mix.expert(s)
    return mix


def measure(
    mix: TiMoE,
    batch: int,
    seq_lens: Sequence[int],
    repeats: int,
    prefix: str = "mixture",
    scaling: bool = True,
) -> Figures:
    """Figures (a)-(c) at batch x seq_lens[0] and, with `scaling`, the 1..6 experts and
    sequence-length series. `prefix` starts every figure name."""
    device = mix.device
    seq = seq_lens[0]
    x = torch.randint(0, min(50257, mix.vocab_size), (batch, seq), device=device)
    V = mix.vocab_size
    print(f"{prefix}: 6 experts ({sum(p.numel() for p in mix.expert(mix.slices[0]).parameters()):,}"
          f" params each), batch {batch} x {seq}, vocab {V}, {device}, threads "
          f"{torch.get_num_threads()}, {repeats} rounds; one (B, T, V) fp32 tensor is "
          f"{batch * seq * V * 4 / 2**20:.1f} MiB")
    f: Figures = {}
    with torch.no_grad():
        # Equivalence first: the benchmark compares like with like.
        diff = (mix.mixture_log_probs(x, "2016") - naive_dense(mix, x, "2016")).abs().max().item()
        if not diff < 1e-3:
            raise RuntimeError(f"streaming and naive dense mixtures differ by {diff:.2e}")

        date = "2016"
        buf = torch.empty(x.numel(), V, device=device)
        r = interleaved_rounds({
            "alone": lambda: experts_alone(mix, x, date),
            "floor": lambda: experts_alone_floor(mix, x, date, buf),
            "mixture": lambda: mix.mixture_log_probs(x, date),
            "naive": lambda: naive_dense(mix, x, date),
        }, repeats, device=device)
        single = peak_memory_bytes(lambda: mix.expert(mix.slices[0]).log_probs(x), device)
        mixture = peak_memory_bytes(lambda: mix.mixture_log_probs(x, date), device)
        naive = peak_memory_bytes(lambda: naive_dense(mix, x, date), device)

    overhead = r.median_ratio("mixture", "alone") - 1
    vs_floor = r.median_ratio("mixture", "floor") - 1
    speedup = r.median_ratio("naive", "mixture")
    for side, label in (("alone", "(a) eligible experts alone"), ("floor", "(a') alone, no alloc"),
                        ("mixture", "(b) mixture_log_probs"), ("naive", "(c) naive dense")):
        print(f"  {label:28s} {r.median(side) * 1e3:9.1f} ms  (rounds "
              f"{fmt_runs(r.seconds[side], 1e3)})")
    print(f"  at 2016 (2 of 6 eligible): overhead vs alone {overhead:+.1%} (target <= "
          f"{TARGET_OVERHEAD:.0%}); vs the no-alloc floor {vs_floor:+.1%}; naive dense / "
          f"mixture {speedup:.2f}x")
    print(f"  peak memory: one expert {single / 2**20:.1f} MiB, mixture {mixture / 2**20:.1f} MiB "
          f"({mixture / single:.2f}x, target <= {TARGET_MEMORY_RATIO}), naive dense "
          f"{naive / 2**20:.1f} MiB ({naive / mixture:.1f}x the mixture's)")
    p = prefix
    f[f"{p}_2016_experts_alone_ms"] = figure(round(r.median("alone") * 1e3, 2), "ms")
    f[f"{p}_2016_ms"] = figure(round(r.median("mixture") * 1e3, 2), "ms")
    f[f"{p}_overhead_vs_experts_alone"] = figure(
        round(overhead, 4), "fraction", f"{p}_2016_experts_alone_ms", TARGET_OVERHEAD, "<=")
    f[f"{p}_2016_no_alloc_floor_ms"] = figure(round(r.median("floor") * 1e3, 2), "ms")
    f[f"{p}_overhead_vs_no_alloc_floor"] = figure(
        round(vs_floor, 4), "fraction", f"{p}_2016_no_alloc_floor_ms")
    f[f"{p}_naive_dense_2016_ms"] = figure(round(r.median("naive") * 1e3, 2), "ms")
    f[f"{p}_speedup_vs_naive_dense"] = figure(round(speedup, 3), "x", f"{p}_naive_dense_2016_ms")
    f[f"{p}_single_expert_peak_mib"] = figure(round(single / 2**20, 2), "MiB")
    f[f"{p}_peak_mib"] = figure(round(mixture / 2**20, 2), "MiB")
    f[f"{p}_memory_ratio_to_single_expert"] = figure(
        round(mixture / single, 3), "x", f"{p}_single_expert_peak_mib", TARGET_MEMORY_RATIO, "<=")
    f[f"{p}_naive_dense_peak_mib"] = figure(round(naive / 2**20, 2), "MiB")
    f[f"{p}_naive_dense_memory_ratio"] = figure(round(naive / mixture, 3), "x", f"{p}_peak_mib")
    if scaling:
        f.update(_scaling_experts(mix, x, single, repeats, p))
        f.update(_scaling_seq(mix, batch, seq_lens, repeats, p))
    return f


def _scaling_experts(mix: TiMoE, x: torch.Tensor, single: int, repeats: int, p: str) -> Figures:
    """Mixture vs its experts alone, and its memory, with 1..6 experts eligible."""
    sides = {}
    for d in SCALING_DATES:
        sides[f"alone {d}"] = lambda d=d: experts_alone(mix, x, d)
        sides[f"mixture {d}"] = lambda d=d: mix.mixture_log_probs(x, d)
    with torch.no_grad():
        r = interleaved_rounds(sides, repeats, device=mix.device)
        peaks = [peak_memory_bytes(lambda d=d: mix.mixture_log_probs(x, d), mix.device)
                 for d in SCALING_DATES]
    f: Figures = {}
    print("  eligible  date  alone ms  mixture ms  overhead  peak MiB  / one expert")
    for n, (d, peak) in enumerate(zip(SCALING_DATES, peaks), start=1):
        a, b = r.median(f"alone {d}"), r.median(f"mixture {d}")
        over = r.median_ratio(f"mixture {d}", f"alone {d}") - 1
        print(f"  {n:8d}  {d}  {a * 1e3:8.1f}  {b * 1e3:10.1f}  {over:+8.1%}  "
              f"{peak / 2**20:8.1f}  {peak / single:12.2f}")
        f[f"{p}_{n}_eligible_experts_alone_ms"] = figure(round(a * 1e3, 2), "ms")
        f[f"{p}_{n}_eligible_ms"] = figure(round(b * 1e3, 2), "ms")
        f[f"{p}_{n}_eligible_overhead"] = figure(
            round(over, 4), "fraction", f"{p}_{n}_eligible_experts_alone_ms",
            TARGET_OVERHEAD, "<=")
        f[f"{p}_{n}_eligible_peak_mib"] = figure(round(peak / 2**20, 2), "MiB")
        f[f"{p}_{n}_eligible_memory_ratio"] = figure(
            round(peak / single, 3), "x", f"{p}_single_expert_peak_mib", TARGET_MEMORY_RATIO, "<=")
    return f


def _scaling_seq(mix: TiMoE, batch: int, seq_lens: Sequence[int], repeats: int, p: str) -> Figures:
    """Mixture vs its experts alone, and memory vs one expert, at 2016 for each length."""
    f: Figures = {}
    print("  seq len  alone ms  mixture ms  overhead  peak MiB  / one expert")
    for T in sorted(seq_lens):
        x = torch.randint(0, min(50257, mix.vocab_size), (batch, T), device=mix.device)
        with torch.no_grad():
            r = interleaved_rounds({
                "alone": lambda x=x: experts_alone(mix, x, "2016"),
                "mixture": lambda x=x: mix.mixture_log_probs(x, "2016"),
            }, repeats, device=mix.device)
            single = peak_memory_bytes(lambda x=x: mix.expert(mix.slices[0]).log_probs(x),
                                       mix.device)
            peak = peak_memory_bytes(lambda x=x: mix.mixture_log_probs(x, "2016"), mix.device)
        over = r.median_ratio("mixture", "alone") - 1
        print(f"  {T:7d}  {r.median('alone') * 1e3:8.1f}  {r.median('mixture') * 1e3:10.1f}  "
              f"{over:+8.1%}  {peak / 2**20:8.1f}  {peak / single:12.2f}")
        f[f"{p}_seq{T}_experts_alone_ms"] = figure(round(r.median("alone") * 1e3, 2), "ms")
        f[f"{p}_seq{T}_ms"] = figure(round(r.median("mixture") * 1e3, 2), "ms")
        f[f"{p}_seq{T}_overhead"] = figure(round(over, 4), "fraction",
                                           f"{p}_seq{T}_experts_alone_ms")
        f[f"{p}_seq{T}_peak_mib"] = figure(round(peak / 2**20, 2), "MiB")
        f[f"{p}_seq{T}_memory_ratio"] = figure(round(peak / single, 3), "x")
    return f


def overhead_at_preset(preset: str, batch: int, seq: int, repeats: int) -> Figures:
    """(a), (a') and (b) at 2016 with two experts of a larger preset: the mixing work
    (logaddexp, the 1/n weight) is per vocabulary entry, like a 128-wide expert's own
    projection, but a small part of a wider, deeper expert's."""
    p = f"mixture_{preset.replace('-', '_')}"
    labels = [s.label for s in TimeSlicing().slices[:2]]  # the experts eligible at 2016
    with tempfile.TemporaryDirectory(prefix="timoe-bench-mixture-preset-") as tmp:
        make_experts(Path(tmp), preset, labels, block_size=seq)
        mix = TiMoE.from_expert_dirs([Path(tmp)])
        x = torch.randint(0, 50257, (batch, seq))
        buf = torch.empty(x.numel(), mix.vocab_size)
        with torch.no_grad():
            r = interleaved_rounds({
                "alone": lambda: experts_alone(mix, x, "2016"),
                "floor": lambda: experts_alone_floor(mix, x, "2016", buf),
                "mixture": lambda: mix.mixture_log_probs(x, "2016"),
            }, repeats)
    over, vs_floor = r.median_ratio("mixture", "alone") - 1, r.median_ratio("mixture", "floor") - 1
    print(f"  {preset} experts, batch {batch} x {seq}, 2016: alone {r.median('alone') * 1e3:.1f} ms, "
          f"no-alloc floor {r.median('floor') * 1e3:.1f} ms, mixture "
          f"{r.median('mixture') * 1e3:.1f} ms: overhead {over:+.1%} vs alone, {vs_floor:+.1%} "
          f"vs the floor")
    return {
        f"{p}_2016_experts_alone_ms": figure(round(r.median("alone") * 1e3, 2), "ms"),
        f"{p}_2016_ms": figure(round(r.median("mixture") * 1e3, 2), "ms"),
        f"{p}_overhead_vs_experts_alone": figure(
            round(over, 4), "fraction", f"{p}_2016_experts_alone_ms", TARGET_OVERHEAD, "<="),
        f"{p}_2016_no_alloc_floor_ms": figure(round(r.median("floor") * 1e3, 2), "ms"),
        f"{p}_overhead_vs_no_alloc_floor": figure(round(vs_floor, 4), "fraction",
                                                  f"{p}_2016_no_alloc_floor_ms"),
    }


TARGET_ROUTER_TRAINING_RATIO = 0.9


def run_router_training(
    quick: bool = False,
    *,
    batch: int | None = None,
    seq: int | None = None,
    repeats: int | None = None,
    preset: str = "tiny",
) -> Figures:
    """(d) learned-avg router training vs its floor, and the log-prob cache.

    Six random `preset` experts, a data dir of random tokens for 2013-2024 (so a batch
    mixes query dates, as in training: 1 to 6 experts eligible per row), one fixed batch
    of B windows of T tokens. Sides, interleaved per round:
      train         one optimizer step of `LearnedAvgTask` through the shared `Trainer`
                    (batch read from disk, router forward/backward, every eligible expert
                    run under no_grad for its target log-probs, AdamW);
      experts       the floor: each expert's own no-grad forward on the rows where it
                    is eligible, as an evaluation runs it (`GPT.forward(x, targets)`:
                    logits and cross-entropy);
      logits        context: the same forward to the logits only (no log-softmax, so no
                    loss could be computed from it);
      train cached  the same step reading the experts' log-probs from the on-disk fp16
                    cache (epoch 2 onwards).
    Figures: train / experts tokens/s (target >= 0.9), the epoch-2+ speed-up of the
    cache (train cached vs train), and the cache build's tokens/s (epoch 1's extra).
    """
    import time

    from tests.helpers import make_data_dir
    from timoe_core.config import TrainRouterConfig
    from timoe_core.recipes.learned_avg import LearnedAvgTask
    from timoe_core.train.distributed import DistEnv
    from timoe_core.train.logprob_cache import LogProbCache, cache_key
    from timoe_core.train.mixture_run import build_mixture, plan_mixture_run
    from timoe_core.train.trainer import Trainer

    B = batch or (4 if quick else 8)
    T = seq or (64 if quick else 128)
    repeats = repeats or (3 if quick else 7)
    per_year = 4 if quick else 8  # windows per data year
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="timoe-bench-router-") as tmp:
        root = Path(tmp)
        make_experts(root / "experts", preset, block_size=T)
        data = make_data_dir(root, years=range(2013, 2025), tokens_per_year=per_year * T + 1,
                             seq_len=T, pattern="random", val_tokens_per_year=0)
        cfg = TrainRouterConfig(experts=[root / "experts"], data=data, out=root / "out",
                                batch_size=B, max_steps=1000, device="cpu",
                                policy="inclusive")  # one router over every year: unstaged
        plan = plan_mixture_run(cfg, "learned-avg", world_size=1, check_run_dir=False)
        env = DistEnv()
        mix = build_mixture(plan, env.device)
        for s in mix.slices:
            mix.expert(s)  # loading is not what is measured
        train = plan.train_windows()
        key = cache_key(data_files_sha256=plan.data_files_sha256, split="train",
                        years=plan.years, seq_len=T, policy=mix.policy,
                        experts=plan.expert_sha256)
        t0 = time.perf_counter()
        cache = LogProbCache.open_or_build(root / "out", key, train, mix, env, batch_size=B)
        build_s = time.perf_counter() - t0
        plain = LearnedAvgTask(mix, train, None, seed=0, eval_windows=0)
        cached = LearnedAvgTask(mix, train, None, seed=0, eval_windows=0, cache=cache)
        # Two trainers over the one router: the values do not matter, the work does.
        trainers = {name: Trainer(task, cfg, env, plan.total_steps)
                    for name, task in (("train", plain), ("train cached", cached))}
        tasks = {"train": plain, "train cached": cached}
        idx = train.shuffled_indices(0, 0)[:B]
        rows, years = train.batch(idx)
        x, y = rows[:, :-1], rows[:, 1:]
        eligible = mix.eligibility(years.tolist(), B)

        def experts_forward(with_targets: bool) -> None:
            with torch.no_grad():
                for k, s in enumerate(mix.slices):
                    sel = eligible[:, k]
                    if sel.any():
                        mix.expert(s)(x[sel], y[sel] if with_targets else None)

        step = [0]

        def train_step(name: str) -> None:
            trainers[name].step(step[0], iter([tasks[name].batch(idx, env.device)]), 1)
            step[0] += 1

        r = interleaved_rounds({
            "train": lambda: train_step("train"),
            "experts": lambda: experts_forward(True),
            "train cached": lambda: train_step("train cached"),
            "logits": lambda: experts_forward(False),
        }, repeats)
    tokens = B * T
    ratio = r.median_ratio("experts", "train")  # (tokens/s of train) / (tokens/s of experts)
    vs_logits = r.median_ratio("logits", "train")
    speedup = r.median_ratio("train", "train cached")
    build_tps = len(train) * T / build_s
    n_eligible = int(eligible.sum())
    print(f"router training (d): 6 x {preset} experts, batch {B} x {T} with query dates "
          f"2013-2024 ({n_eligible} expert-rows eligible of {6 * B}), threads "
          f"{torch.get_num_threads()}, {repeats} rounds")
    for side in ("train", "experts", "logits", "train cached"):
        print(f"  {side:14s} {tokens / r.median(side):10,.0f} tok/s  (rounds "
              f"{fmt_runs(r.rates(side, tokens), 1, 0)})")
    print(f"  learned-avg training / eligible experts' no-grad forward: {ratio:.2f}x "
          f"(target >= {TARGET_ROUTER_TRAINING_RATIO}); / their logits alone: "
          f"{vs_logits:.2f}x")
    print(f"  epoch 2+ with the log-prob cache: {speedup:.1f}x faster per step; building it "
          f"(epoch 1's extra): {build_tps:,.0f} tok/s over {len(train)} windows")
    p = "router_training"
    return {
        f"{p}_tokens_per_s": figure(round(tokens / r.median("train")), "tokens/s"),
        f"{p}_experts_forward_tokens_per_s": figure(round(tokens / r.median("experts")),
                                                    "tokens/s"),
        f"{p}_ratio_to_experts_forward": figure(
            round(ratio, 3), "x", f"{p}_experts_forward_tokens_per_s",
            TARGET_ROUTER_TRAINING_RATIO, ">="),
        f"{p}_experts_logits_tokens_per_s": figure(round(tokens / r.median("logits")),
                                                   "tokens/s"),
        f"{p}_ratio_to_experts_logits": figure(round(vs_logits, 3), "x",
                                               f"{p}_experts_logits_tokens_per_s"),
        f"{p}_cached_tokens_per_s": figure(round(tokens / r.median("train cached")), "tokens/s"),
        f"{p}_cache_speedup_epoch2": figure(round(speedup, 2), "x", f"{p}_tokens_per_s"),
        f"{p}_cache_build_tokens_per_s": figure(round(build_tps), "tokens/s"),
    }


def run(
    quick: bool = False,
    *,
    batch: int | None = None,
    seq_lens: Sequence[int] | None = None,
    repeats: int | None = None,
    preset: str = "tiny",
    scaling: bool = True,
    wider: str | None = "small",
    **model_overrides: Any,
) -> Figures:
    """The CPU mixture figures; seq_lens[0] is the length of the headline figures; `wider`:
    a larger preset whose overhead at 2016 is measured too (None: not).
    `model_overrides` change fields of the preset (tests use a small vocabulary)."""
    batch = batch or (2 if quick else 4)
    seq_lens = list(seq_lens or ((128, 64, 256) if quick else (128, 32, 64, 256)))
    repeats = repeats or (3 if quick else 7)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="timoe-bench-mixture-") as tmp:
        mix = load_mixture(Path(tmp), preset, max(seq_lens), torch.device("cpu"),
                           **model_overrides)
        f = measure(mix, batch, seq_lens, repeats, scaling=scaling)
    if wider:
        f.update(overhead_at_preset(wider, batch, seq_lens[0], repeats))
    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller batch, fewer rounds")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; quick 3)")
    ap.add_argument("--batch", type=int, default=None, help="rows (default 4; quick 2)")
    ap.add_argument("--seq", type=int, nargs="+", default=None,
                    help="sequence lengths; the first is the headline's (default 128 32 64 256)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = run(args.quick, batch=args.batch, seq_lens=args.seq, repeats=args.repeats)
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
