"""Benchmark of `TiMoE.mixture_log_probs` against its eligible experts run alone.

    python benchmarks/mixture.py [--quick] [--json FILE] [--repeats N] [--batch 4] [--seq 128]

Six random experts of the `tiny` preset (2 layers, 128 wide, GPT-2 vocab 50304, the size
that trains on a CPU), one per default slice; one batch of B x T random tokens; fp32 on
CPU, no_grad. In one run on the same batch:

(a) the eligible experts run alone: `expert.log_probs(x)` for each, one after the
    other (the sum of their times); (a') the same work with no allocation (logits into
    one reused buffer, log-softmax in place), the compute floor (a) contains;
(b) `mixture_log_probs(x, date)`: overhead (b - a) / a, target <= 10%;
    peak memory of (b) vs one expert's `log_probs(x)`, target <= 1.25x;
(c) a naive all-experts dense mixture (every expert run, masked ones kept in the
    (experts, B, T, V) stack with weight 0, then logsumexp): speed-up and memory ratio
    of (b) against it at query date 2016 (2 of 6 experts eligible);
and the scaling of (a), (b) time and (b) memory with the number of eligible experts
1..6 (query dates 2013, 2015, ..., 2023).

Times: median of `--repeats` runs, the variants interleaved in each round so drift on
a shared machine hits them alike. Memory: the peak of live tensor bytes allocated
during the call, relative to its start (the output included, the loaded weights not),
from the PyTorch profiler's allocator events (`peak_allocated_bytes`) — it counts
exactly the tensors the code makes, on CPU, where no allocator statistics exist.
`--json FILE` writes `{name: {"value", "unit", "ratio_to", "target"}}`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from timoe_core.checkpoint import RunInfo, save_model_weights, write_run_info  # noqa: E402
from timoe_core.model.gpt import GPT, preset_config  # noqa: E402
from timoe_core.model.mixture import TiMoE  # noqa: E402
from timoe_core.timeslices import TimeSlicing  # noqa: E402

TARGET_OVERHEAD = 0.10
TARGET_MEMORY_RATIO = 1.25
GPT2 = {"name": "gpt2", "vocab_size": 50257, "eot_token": 50256}


def peak_allocated_bytes(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(peak bytes of tensors allocated by `fn` and alive at once, fn's result).

    Replays the allocation/free events the PyTorch profiler records (profile_memory),
    in time order, from zero at the start of the call. Tensors alive before the call
    (weights, inputs) are not counted; the returned result is.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    alloc = torch._C._profiler._EventType.Allocation
    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == alloc:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    events.sort()
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak, result


def make_experts(
    root: Path, preset: str = "tiny", seed: int = 0, n: int = 6, **overrides: Any
) -> list[Path]:
    """Random expert run dirs under `root`, one per default slice (the first `n`)."""
    cfg = preset_config(preset, **overrides)
    torch.manual_seed(seed)
    dirs = []
    for s in TimeSlicing().slices[:n]:
        d = root / s.label
        d.mkdir(parents=True, exist_ok=True)
        save_model_weights(d, GPT(cfg))
        write_run_info(d, RunInfo(
            kind="expert", slice_label=s.label, start_date=s.start.isoformat(),
            end_date=s.end.isoformat(), model_config_=cfg, tokenizer=GPT2,
        ))
        dirs.append(d)
    return dirs


def naive_dense(mix: TiMoE, x: torch.Tensor, query_date: str) -> torch.Tensor:
    """Every expert run, its log-softmax stacked; ineligible ones kept with weight 0."""
    eligible = set(mix.eligible_experts(query_date))
    n = len(eligible)
    stack = torch.stack([mix.expert(s).log_probs(x) for s in mix.slices])  # (K, B, T, V)
    logw = torch.tensor(
        [-math.log(n) if s in eligible else float("-inf") for s in mix.slices]
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


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_times(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, the functions interleaved round by round."""
    for fn in fns.values():  # warm-up
        fn()
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            runs[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in runs.items()}


def figure(value: float, unit: str, ratio_to: str | None = None, target: float | None = None):
    return {"value": value, "unit": unit, "ratio_to": ratio_to, "target": target}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no 1..6 scaling repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9; quick 3)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="timoe-bench-mixture-") as tmp:
        make_experts(Path(tmp), block_size=max(args.seq, 2))
        mix = TiMoE.from_expert_dirs([Path(tmp)], strategy="avg")
        for s in mix.slices:
            mix.expert(s)  # load everything up front: loading is not what is measured
        x = torch.randint(0, 50257, (args.batch, args.seq))
        V = mix.vocab_size
        n_params = sum(p.numel() for p in mix.expert(mix.slices[0]).parameters())
        print(f"experts: 6 x tiny ({n_params:,} params), batch {args.batch} x {args.seq}, "
              f"vocab {V}, threads {torch.get_num_threads()}, repeats {repeats}")
        print(f"one (B, T, V) fp32 tensor: {args.batch * args.seq * V * 4 / 2**20:.1f} MiB")

        with torch.no_grad():
            # Equivalence first: the benchmark compares like with like.
            diff = (mix.mixture_log_probs(x, "2016") - naive_dense(mix, x, "2016")).abs().max()
            print(f"check: streaming vs naive dense at 2016, max |diff| = {diff.item():.2e}")

            date = "2016"
            buf = torch.empty(x.numel(), V)
            t = median_times({
                "alone": lambda: experts_alone(mix, x, date),
                "floor": lambda: experts_alone_floor(mix, x, date, buf),
                "mixture": lambda: mix.mixture_log_probs(x, date),
                "naive": lambda: naive_dense(mix, x, date),
            }, repeats)
            single_peak, _ = peak_allocated_bytes(lambda: mix.expert(mix.slices[0]).log_probs(x))
            mix_peak, _ = peak_allocated_bytes(lambda: mix.mixture_log_probs(x, date))
            naive_peak, _ = peak_allocated_bytes(lambda: naive_dense(mix, x, date))

            scaling = []
            dates = ["2013", "2015", "2017", "2019", "2021", "2023"]
            for n, d in enumerate(dates, start=1):
                ts = median_times({
                    "alone": lambda d=d: experts_alone(mix, x, d),
                    "mixture": lambda d=d: mix.mixture_log_probs(x, d),
                }, max(3, repeats // 3) if args.quick else repeats)
                peak, _ = peak_allocated_bytes(lambda d=d: mix.mixture_log_probs(x, d))
                scaling.append((n, d, ts["alone"], ts["mixture"], peak))

    overhead = (t["mixture"] - t["alone"]) / t["alone"]
    mem_ratio = mix_peak / single_peak
    print()
    print(f"query date {date}: 2 of 6 experts eligible")
    print(f"(a) eligible experts alone     : {t['alone'] * 1e3:8.1f} ms")
    print(f"(b) mixture_log_probs          : {t['mixture'] * 1e3:8.1f} ms   overhead "
          f"{overhead * 100:+.1f}% (target <= {TARGET_OVERHEAD * 100:.0f}%)")
    print(f"(a') alone, buffers reused     : {t['floor'] * 1e3:8.1f} ms   mixture vs this floor "
          f"{(t['mixture'] - t['floor']) / t['floor'] * 100:+.1f}% (the cost of logaddexp)")
    print(f"(c) naive all-experts dense    : {t['naive'] * 1e3:8.1f} ms   mixture is "
          f"{t['naive'] / t['mixture']:.2f}x faster")
    print(f"peak memory one expert forward : {single_peak / 2**20:8.1f} MiB")
    print(f"peak memory mixture            : {mix_peak / 2**20:8.1f} MiB   ratio {mem_ratio:.2f}"
          f" (target <= {TARGET_MEMORY_RATIO})")
    print(f"peak memory naive dense        : {naive_peak / 2**20:8.1f} MiB   "
          f"{naive_peak / mix_peak:.1f}x the mixture's")
    print()
    print("eligible  date  alone ms  mixture ms  overhead  mixture peak MiB  / one expert")
    for n, d, a, b, peak in scaling:
        print(f"{n:8d}  {d}  {a * 1e3:8.1f}  {b * 1e3:10.1f}  {(b - a) / a * 100:+7.1f}%  "
              f"{peak / 2**20:16.1f}  {peak / single_peak:12.2f}")

    figures = {
        "mixture_2016_alone_ms": figure(round(t["alone"] * 1e3, 2), "ms"),
        "mixture_2016_ms": figure(round(t["mixture"] * 1e3, 2), "ms", "mixture_2016_alone_ms"),
        "mixture_overhead_vs_experts_alone": figure(round(overhead, 4), "fraction", None,
                                                    TARGET_OVERHEAD),
        "mixture_2016_floor_ms": figure(round(t["floor"] * 1e3, 2), "ms"),
        "mixture_overhead_vs_compute_floor": figure(
            round((t["mixture"] - t["floor"]) / t["floor"], 4), "fraction", None, None),
        "mixture_peak_memory_mib": figure(round(mix_peak / 2**20, 2), "MiB"),
        "single_expert_peak_memory_mib": figure(round(single_peak / 2**20, 2), "MiB"),
        "mixture_memory_ratio_to_single_expert": figure(round(mem_ratio, 3), "ratio",
                                                        "single_expert_peak_memory_mib",
                                                        TARGET_MEMORY_RATIO),
        "naive_dense_2016_ms": figure(round(t["naive"] * 1e3, 2), "ms"),
        "mixture_speedup_vs_naive_dense": figure(round(t["naive"] / t["mixture"], 3), "x",
                                                 "naive_dense_2016_ms"),
        "naive_dense_memory_ratio_to_mixture": figure(round(naive_peak / mix_peak, 3), "x",
                                                      "mixture_peak_memory_mib"),
    }
    for n, d, a, b, peak in scaling:
        figures[f"mixture_{n}_eligible_ms"] = figure(round(b * 1e3, 2), "ms")
        figures[f"experts_alone_{n}_eligible_ms"] = figure(round(a * 1e3, 2), "ms")
        figures[f"mixture_{n}_eligible_overhead"] = figure(round((b - a) / a, 4), "fraction",
                                                           None, TARGET_OVERHEAD)
        figures[f"mixture_{n}_eligible_peak_mib"] = figure(round(peak / 2**20, 2), "MiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
