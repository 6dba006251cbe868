"""Benchmark of `timoe evaluate` perplexity against the bare mixture forward.

    python -m benchmarks.evaluate [--quick] [--json FILE] [--device cpu|cuda]
                                  [--preset tiny|small|gpt2-124m] [--experts K]
                                  [--windows N] [--batch-size B] [--repeats R]

Experts are random-initialised GPTs of the preset (speed does not depend on what they
learned), combined by `avg`; the data is a synthetic prepared data dir (12 years of
val tokens). On the same windows, in the same batches, with the same query dates:

- bare forward: `TiMoE.mixture_target_log_probs` alone on batches already on the
  device (no data loading, no reduction), under inference_mode;
- evaluate: `evaluate_perplexity` end to end (memmap reads, batching, the date of
  every row, NLL sums per year, the report numbers).

Two settings: every window as of one query date (all experts eligible), and each
window as of its own year (fewer experts for early years). Each round runs both sides,
the order rotated between rounds, after a warm-up; tokens/s are medians over rounds and
the ratio is the median of the per-round ratios (target: evaluate >= 0.9 x the bare
forward, i.e. overhead <= 10%).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    Figures,
    figure,
    fmt_runs,
    interleaved_rounds,
    make_experts,
    sync,
    write_json,
)
from tests.helpers import make_data_dir
from timoe_core.data.windows import TokenWindows
from timoe_core.evaluate.models import EvaluatedModel, load_evaluated_model
from timoe_core.evaluate.perplexity import evaluate_perplexity
from timoe_core.model.gpt import preset_config
from timoe_core.timeslices import TimeSlicing, parse_query_date

TARGET_RATIO = 0.9
YEARS = list(range(2013, 2025))


def bare_forward(model: EvaluatedModel, batches: list, device: torch.device) -> None:
    """The mixture forward alone over pre-loaded batches."""
    with torch.inference_mode():
        for x, y, dates in batches:
            model.target_log_probs(x, y, dates)
    sync(device)


def make_batches(
    model: EvaluatedModel, data: Path, query_date: str | None, batch_size: int,
    device: torch.device,
) -> tuple[list, int]:
    """The batches `evaluate_perplexity` builds (years in order, windows in order), over
    the years it scores: those with an expert usable as of their query date (read as of
    its own year, a year before the first expert's cutoff has none and is skipped)."""
    seq_len = model.block_size  # = the data's seq_len here, as evaluate resolves it
    w = TokenWindows(data, "val", YEARS, seq_len)
    scored = [y for y in YEARS
              if model.ineligibility(parse_query_date(query_date if query_date else y)) is None]
    work = [(int(i), y) for y in scored for i in np.flatnonzero(w.window_years == y)]
    batches = []
    for s in range(0, len(work), batch_size):
        chunk = work[s : s + batch_size]
        rows, _ = w.batch([i for i, _ in chunk])
        rows = rows.to(device)
        dates = [parse_query_date(query_date if query_date else y) for _, y in chunk]
        qd = dates[0] if len(set(dates)) == 1 else dates
        batches.append((rows[:, :-1], rows[:, 1:], qd))
    return batches, len(work) * seq_len


def run(
    quick: bool = False,
    *,
    device: str = "cpu",
    preset: str = "tiny",
    experts: int | None = None,
    windows: int | None = None,
    batch_size: int | None = None,
    repeats: int | None = None,
) -> Figures:
    """Evaluate vs bare forward, as of 2024 and as of each window's own year."""
    dev = torch.device(device)
    k = experts or (3 if quick else 6)
    windows = windows or (2 if quick else 4)
    batch_size = batch_size or 8
    repeats = repeats or (3 if quick else 5)
    prefix = "eval" if dev.type == "cpu" else f"gpu_eval_{preset.replace('-', '_')}"
    f: Figures = {}
    with tempfile.TemporaryDirectory(prefix="timoe-bench-eval-") as tmp:
        tmp = Path(tmp)
        seq_len = preset_config(preset).block_size
        data = make_data_dir(tmp, years=YEARS, tokens_per_year=0, seq_len=seq_len,
                             val_tokens_per_year=windows * seq_len + 1, pattern="random")
        width = -(-len(YEARS) // k)  # k slices of `width` years cover 2013-2024
        make_experts(tmp / "experts", preset, [s.label for s in TimeSlicing(2013, 2024,
                                                                          width).slices])
        model = load_evaluated_model(tmp / "experts", "avg", device=dev)
        print(f"evaluate: {dev} ({torch.get_num_threads()} threads), preset {preset}, {k} experts, "
              f"{windows} windows/year of {seq_len} tokens, batch {batch_size}, amp {model.amp}, "
              f"{repeats} rounds")
        for name, qd in (("query_date", "2024"), ("own_date", None)):
            batches, tokens = make_batches(model, data, qd, batch_size, dev)
            r = interleaved_rounds({
                "bare": lambda b=batches: bare_forward(model, b, dev),
                "evaluate": lambda qd=qd: evaluate_perplexity(model, data, query_date=qd,
                                                              batch_size=batch_size),
            }, repeats, device=dev)
            ratio = r.median_ratio("bare", "evaluate")
            label = f"as of {qd}" if qd else "own year"
            print(f"  [{label:>10}] bare forward {tokens / r.median('bare'):10,.0f} tokens/s "
                  f"(rounds {fmt_runs(r.rates('bare', tokens), digits=0)}); evaluate "
                  f"{tokens / r.median('evaluate'):10,.0f} tokens/s (rounds "
                  f"{fmt_runs(r.rates('evaluate', tokens), digits=0)}); ratio {ratio:.3f} "
                  f"(target >= {TARGET_RATIO})")
            base = f"{prefix}_{name}_bare_forward_tokens_per_s"
            f[base] = figure(round(tokens / r.median("bare")), "tokens/s")
            f[f"{prefix}_{name}_tokens_per_s"] = figure(round(tokens / r.median("evaluate")),
                                                       "tokens/s")
            f[f"{prefix}_{name}_ratio_to_bare_forward"] = figure(round(ratio, 3), "x", base,
                                                                 TARGET_RATIO, ">=")
    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 experts, 2 windows per year")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default="tiny", help="tiny | small | gpt2-124m")
    ap.add_argument("--experts", type=int, default=None, help="number of experts (default 6)")
    ap.add_argument("--windows", type=int, default=None, help="val windows per year")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    figures = run(args.quick, device=args.device, preset=args.preset, experts=args.experts,
                  windows=args.windows, batch_size=args.batch_size, repeats=args.repeats)
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
