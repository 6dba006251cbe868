"""Does the built-in corpus make time visible? TiMoE (avg) vs a dense model, on CPU.

Prepares the built-in corpus, trains one tiny expert per 2-year slice and one dense
model on all years with the same total compute (6x the steps), then scores the
built-in TSQA questions, each as of its own year:

- TiMoE avg over the experts eligible at the question's date;
- the dense model;
- each expert on the questions of its own slice's years.

The claim the demo makes: at each item's own date, TiMoE's future-error rate is well
below the dense model's, and its accuracy is not worse. CPU-heavy (minutes): run it
by hand, never in the test suite.

    TIKTOKEN_CACHE_DIR=/path/to/tiktoken_cache python scripts/builtin_experiment.py \\
        --out /tmp/builtin-exp --docs-per-year 100 --steps 80
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from timoe_core.config import PrepareDataConfig, TrainExpertConfig
from timoe_core.data.builtin import builtin_tsqa
from timoe_core.data.prepare import prepare_data
from timoe_core.evaluate.models import load_evaluated_model
from timoe_core.evaluate.tsqa import score_tsqa
from timoe_core.train.expert import train_expert

SLICE_STARTS = range(2013, 2025, 2)


def _row(name: str, res, seconds: float | None = None) -> dict:
    return {"model": name, "n": res.n, "accuracy": res.accuracy, **res.error_rates,
            "train_s": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--docs-per-year", type=int, default=100)
    p.add_argument("--steps", type=int, default=80, help="steps per expert; dense gets 6x")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    data = args.out / "data"
    if not (data / "manifest.json").is_file():
        prepare_data(PrepareDataConfig(source="builtin", out=data, seq_len=args.seq_len,
                                       builtin_docs_per_year=args.docs_per_year, workers=1,
                                       val_fraction=0.02, seed=args.seed))

    def train(out: Path, steps: int, **target) -> float:
        t0 = time.perf_counter()
        train_expert(TrainExpertConfig(
            data=data, out=out, preset="tiny", seq_len=args.seq_len,
            batch_size=args.batch_size, lr=args.lr, max_steps=steps, seed=args.seed,
            device="cpu", log_every=max(1, steps // 4), **target))
        return time.perf_counter() - t0

    seconds = {}
    for start in SLICE_STARTS:
        label = f"{start}-{start + 1}"
        seconds[label] = train(args.out / "experts" / label, args.steps, year=start)
    seconds["dense"] = train(args.out / "dense", 6 * args.steps, all_years=True)

    items = builtin_tsqa(seed=0)
    rows = [
        _row("timoe-avg", score_tsqa(load_evaluated_model(args.out / "experts", "avg",
                                                          device="cpu"), items)),
        _row("dense", score_tsqa(load_evaluated_model(args.out / "dense", device="cpu"), items),
             seconds["dense"]),
    ]
    for start in SLICE_STARTS:
        label = f"{start}-{start + 1}"
        own = [it for it in items if start <= it.year <= start + 1]
        model = load_evaluated_model(args.out / "experts" / label, device="cpu")
        rows.append(_row(f"expert {label} (own years)", score_tsqa(model, own), seconds[label]))

    print(f"docs_per_year={args.docs_per_year} steps={args.steps} (dense {6 * args.steps}) "
          f"batch={args.batch_size} seq_len={args.seq_len} lr={args.lr}")
    print(f"{'model':30} {'n':>4} {'acc':>6} {'past':>6} {'future':>6} {'irrel':>6} {'train s':>8}")
    for r in rows:
        t = f"{r['train_s']:.0f}" if r["train_s"] is not None else ""
        print(f"{r['model']:30} {r['n']:4d} {r['accuracy']:6.3f} {r['past']:6.3f} "
              f"{r['future']:6.3f} {r['irrelevant']:6.3f} {t:>8}")
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in
                                                                vars(args).items()},
                                                       "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
