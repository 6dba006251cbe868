"""Benchmark of `timoe evaluate` perplexity against the bare mixture forward.

    python benchmarks/evaluate.py [--quick] [--json FILE] [--device auto|cpu|cuda]
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
window as of its own year (fewer experts for early years). Figures are tokens/s, the
best of `--repeats` alternating runs after a warm-up; the overhead target is
evaluate >= 0.9 x bare forward. `--json FILE` writes
`{name: {"value", "unit", "ratio_to", "target"}}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
_CACHE = ROOT.parent / "shared" / "tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _CACHE.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_CACHE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from timoe_core.checkpoint import RunInfo, save_model_weights, write_run_info  # noqa: E402
from timoe_core.data.manifest import (  # noqa: E402
    FileEntry,
    Manifest,
    SlicingSpec,
    SplitStats,
    YearStats,
    sha256_file,
    token_file_relpath,
)
from timoe_core.data.windows import TokenWindows  # noqa: E402
from timoe_core.evaluate.models import load_evaluated_model  # noqa: E402
from timoe_core.evaluate.perplexity import evaluate_perplexity, subsample  # noqa: E402
from timoe_core.io import atomic_write_json  # noqa: E402
from timoe_core.model.gpt import GPT, preset_config  # noqa: E402
from timoe_core.timeslices import TimeSlicing, parse_query_date  # noqa: E402
from timoe_core.train.distributed import resolve_device  # noqa: E402

TARGET_RATIO = 0.9
YEARS = list(range(2013, 2025))
GPT2 = {"name": "gpt2", "vocab_size": 50257, "eot_token": 50256}


def write_data(root: Path, seq_len: int, windows_per_year: int) -> Path:
    n = windows_per_year * seq_len + 1
    m = Manifest(vocab_size=50257, eot_token=50256, seq_len=seq_len, val_fraction=0.01,
                 source="benchmark", slicing=SlicingSpec(start_year=2013, end_year=2024,
                                                         slice_years=2))
    rng = np.random.default_rng(0)
    for y in YEARS:
        rel = token_file_relpath("val", y)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        rng.integers(0, 50256, n).astype(np.uint16).tofile(root / rel)
        m.years[str(y)] = YearStats(val=SplitStats(tokens=n, documents=1))
        m.files[rel] = FileEntry(bytes=2 * n, sha256=sha256_file(root / rel))
    atomic_write_json(root / "manifest.json", json.loads(m.model_dump_json()))
    return root


def write_experts(root: Path, preset: str, k: int) -> Path:
    cfg = preset_config(preset)
    width = -(-len(YEARS) // k)  # k slices of `width` years cover 2013-2024
    for i, s in enumerate(TimeSlicing(2013, 2024, width).slices):
        torch.manual_seed(i)
        d = root / s.label
        d.mkdir(parents=True)
        save_model_weights(d, GPT(cfg))
        write_run_info(d, RunInfo(kind="expert", slice_label=s.label,
                                  start_date=s.start.isoformat(), end_date=s.end.isoformat(),
                                  model_config_=cfg, tokenizer=dict(GPT2)))
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_forward(model, batches, device) -> float:
    """Seconds for the mixture forward alone over pre-loaded batches."""
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, y, dates in batches:
            model.target_log_probs(x, y, dates)
    sync(device)
    return time.perf_counter() - t0


def end_to_end(model, data: Path, query_date, batch_size, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    evaluate_perplexity(model, data, query_date=query_date, batch_size=batch_size)
    sync(device)
    return time.perf_counter() - t0


def make_batches(model, data: Path, query_date, batch_size: int, device):
    """The batches `evaluate_perplexity` builds (years in order, windows in order)."""
    seq_len = model.block_size  # = the data's seq_len here, as evaluate resolves it
    w = TokenWindows(data, "val", YEARS, seq_len)
    work = [(int(i), y) for y in YEARS for i in subsample(np.flatnonzero(w.window_years == y),
                                                           None)]
    batches = []
    for s in range(0, len(work), batch_size):
        chunk = work[s : s + batch_size]
        rows, _ = w.batch([i for i, _ in chunk])
        rows = rows.to(device)
        dates = [parse_query_date(query_date if query_date else y) for _, y in chunk]
        qd = dates[0] if len(set(dates)) == 1 else dates
        batches.append((rows[:, :-1], rows[:, 1:], qd))
    return batches, len(work) * seq_len


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny experts, few windows, 1 repeat")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default=None, help="tiny | small | gpt2-124m")
    ap.add_argument("--experts", type=int, default=None, help="number of experts (default 6)")
    ap.add_argument("--windows", type=int, default=None, help="val windows per year")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    preset = args.preset or ("tiny" if args.quick or not gpu else "gpt2-124m")
    k = args.experts or (3 if args.quick else 6)
    windows = args.windows or (32 if gpu and not args.quick else 2)
    batch_size = args.batch_size or (16 if gpu else 8)
    repeats = args.repeats or (1 if args.quick else 3)

    with tempfile.TemporaryDirectory(prefix="timoe-bench-eval-") as tmp:
        tmp = Path(tmp)
        seq_len = preset_config(preset).block_size
        data = write_data(tmp / "data", seq_len, windows)
        write_experts(tmp / "experts", preset, k)
        model = load_evaluated_model(tmp / "experts", "avg", device=device)
        print(f"device: {device} ({torch.get_num_threads()} threads), preset {preset}, "
              f"{k} experts, {windows} windows/year of {seq_len} tokens, batch {batch_size}, "
              f"amp {model.amp}, repeats {repeats}")
        figures = {}
        for name, qd in (("query_date", "2024"), ("own_date", None)):
            batches, tokens = make_batches(model, data, qd, batch_size, device)
            bare_forward(model, batches[:2], device)  # warm-up: loads every expert
            end_to_end(model, data, qd, batch_size, device)
            bare, e2e = [], []
            for _ in range(repeats):
                bare.append(tokens / bare_forward(model, batches, device))
                e2e.append(tokens / end_to_end(model, data, qd, batch_size, device))
            b, e = max(bare), max(e2e)
            label = f"as of {qd}" if qd else "own year"
            print(f"[{label:>10}] bare forward {b:12,.0f} tokens/s   evaluate {e:12,.0f} "
                  f"tokens/s   ratio {e / b:.3f}  (target >= {TARGET_RATIO}; runs bare "
                  f"{', '.join(f'{x:,.0f}' for x in bare)}; evaluate "
                  f"{', '.join(f'{x:,.0f}' for x in e2e)})")
            figures[f"eval_{name}_bare_forward_tokens_per_s"] = {
                "value": round(b), "unit": "tokens/s", "ratio_to": None, "target": None}
            figures[f"eval_{name}_tokens_per_s"] = {
                "value": round(e), "unit": "tokens/s",
                "ratio_to": f"eval_{name}_bare_forward_tokens_per_s", "target": TARGET_RATIO}
            figures[f"eval_{name}_ratio_to_bare_forward"] = {
                "value": round(e / b, 3), "unit": "ratio", "ratio_to": None,
                "target": TARGET_RATIO}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
