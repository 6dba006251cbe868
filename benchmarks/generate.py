"""Benchmark of generation: KV-cache decoding vs full recomputation of the context.

    python -m benchmarks.generate [--quick] [--json FILE] [--new-tokens 256]
                                  [--prompt-tokens 32 256] [--preset small]
                                  [--cases single 2016 2024] [--repeats R]

Random experts of the `small` preset (6 layers, 384 wide, GPT-2 vocab 50304; `--preset`
to change) with a 512-token context (so 256 new tokens never need the context cut back),
fp32 on CPU, greedy decoding of `--new-tokens` tokens after a random prompt of each
length in `--prompt-tokens`:

- a single expert;
- the avg mixture at query date 2016 (2 of 6 experts eligible, each with its own cache;
  the only case with --quick);
- the avg mixture at 2024 (all 6 eligible).

Each is decoded with the KV cache (`use_cache=True`: one new position per expert and
step) and by full recomputation (`use_cache=False`: the whole context every step). Both
project only the last position onto the vocabulary, so the ratio is the cache's gain
alone; it grows with the context (the recomputed work) and shrinks where the vocabulary
projection, which both modes pay every token, dominates the model. Each round decodes
with both modes (order rotated between rounds, after a short warm-up); tokens/s are medians,
the speed-up the median of the per-round ratios; the two modes' tokens are checked
equal. Target: cache >= 5x full recomputation at 256 new tokens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.common import (
    Figures,
    Measured,
    figure,
    fmt_runs,
    interleaved_rounds,
    make_experts,
    write_json,
)
from timoe_core.generate import generate_tokens
from timoe_core.model.gpt import GPT
from timoe_core.model.mixture import TiMoE
from timoe_core.timeslices import TimeSlicing

TARGET_SPEEDUP = 5.0
CASES = {"single": ("single_expert", None), "2016": ("mixture_2016", "2016"),
         "2024": ("mixture_2024", "2024")}


def run(
    quick: bool = False,
    *,
    preset: str = "small",
    new_tokens: int = 256,
    prompt_lengths: Sequence[int] | None = None,
    cases: Sequence[str] | None = None,
    repeats: int | None = None,
) -> Figures:
    """Cache vs full recomputation for every case and prompt length."""
    prompt_lengths = list(prompt_lengths or ((32,) if quick else (32, 256)))
    # quick: the mixture's path only (two experts, two caches), the one TiMoE adds
    cases = list(cases or (("2016",) if quick else ("single", "2016", "2024")))
    repeats = repeats or (2 if quick else 3)
    block = max(512, max(prompt_lengths) + new_tokens)
    f: Figures = {}
    with tempfile.TemporaryDirectory(prefix="timoe-bench-generate-") as tmp:
        labels = [s.label for s in TimeSlicing().slices][: 6 if "2024" in cases else 2]
        make_experts(Path(tmp), preset, labels, block_size=block)
        mix = TiMoE.from_expert_dirs([Path(tmp)])
        print(f"generate: {preset} experts, block_size {block}, {new_tokens} new tokens, greedy, "
              f"threads {torch.get_num_threads()}, {repeats} rounds")
        for n_prompt in prompt_lengths:
            prompt = torch.randint(0, 50257, (n_prompt,),
                                   generator=torch.Generator().manual_seed(0)).tolist()
            for case in cases:
                name, date = CASES[case]
                model: TiMoE | GPT = mix.expert(mix.slices[0]) if case == "single" else mix
                tokens: dict[bool, list[int]] = {}

                def decode(use_cache: bool, model=model, date=date, prompt=prompt, name=name,
                           tokens=tokens) -> Measured:
                    r = generate_tokens(model, prompt, query_date=date, greedy=True,
                                        max_new_tokens=new_tokens, use_cache=use_cache)
                    if len(r.tokens) != new_tokens:
                        raise RuntimeError(f"{name}: {len(r.tokens)} tokens, not {new_tokens}")
                    if tokens.setdefault(use_cache, r.tokens) != r.tokens:
                        raise RuntimeError(f"{name}: greedy decoding is not deterministic")
                    return Measured(r.seconds)

                for use_cache in (True, False):  # warm-up (loads the experts), untimed
                    generate_tokens(model, prompt, query_date=date, max_new_tokens=8,
                                    use_cache=use_cache)
                r = interleaved_rounds({"cache": lambda: decode(True),
                                        "full": lambda: decode(False)}, repeats, warmup=0)
                if tokens[True] != tokens[False]:
                    raise RuntimeError(f"{name}: cached and recomputed tokens differ")
                speedup = r.median_ratio("full", "cache")
                cache_tps, full_tps = new_tokens / r.median("cache"), new_tokens / r.median("full")
                print(f"  {name:14s} prompt {n_prompt:4d}: cache {cache_tps:8.1f} tokens/s "
                      f"(rounds {fmt_runs(r.rates('cache', new_tokens))}), full "
                      f"{full_tps:8.1f} (rounds {fmt_runs(r.rates('full', new_tokens))}): "
                      f"{speedup:.1f}x (target >= {TARGET_SPEEDUP:g}x)")
                key = f"generate_{name}_prompt{n_prompt}"
                f[f"{key}_cache_tokens_per_s"] = figure(round(cache_tps, 1), "tokens/s")
                f[f"{key}_full_tokens_per_s"] = figure(round(full_tps, 1), "tokens/s")
                f[f"{key}_cache_speedup"] = figure(round(speedup, 2), "x",
                                                   f"{key}_full_tokens_per_s", TARGET_SPEEDUP, ">=")
    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="prompt 32, the mixture at 2016 only")
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "gpt2-124m"])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=None,
                    help="prompt lengths (default 32 256)")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=None,
                    help="default: all (quick: 2016)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 3; quick 2)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    figures = run(args.quick, preset=args.preset, new_tokens=args.new_tokens,
                  prompt_lengths=args.prompt_tokens, cases=args.cases, repeats=args.repeats)
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
