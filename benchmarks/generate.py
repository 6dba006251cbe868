"""Benchmark of generation: KV-cache decoding vs full recomputation of the context.

    python benchmarks/generate.py [--quick] [--json FILE] [--new-tokens 256]
                                  [--prompt-tokens 32,256] [--preset small] [--threads N]

Random experts of the `small` preset (6 layers, 384 wide, GPT-2 vocab 50304; `--preset`
to change) with a 512-token context (block_size 512, so 256 new tokens never need the
context cut back), fp32 on CPU, greedy decoding of `--new-tokens` tokens after a random
prompt of each length in `--prompt-tokens`:

- a single expert;
- the avg mixture at query date 2016 (2 of 6 experts eligible, each with its own cache);
- the avg mixture at 2024 (all 6 eligible; not with --quick). `--cases` picks among them.

Each is decoded with the KV cache (`use_cache=True`: one new position per expert and
step) and by full recomputation (`use_cache=False`: the whole context every step). Both
project only the last position onto the vocabulary, so the ratio is the cache's gain
alone; it grows with the context (the recomputed work) and shrinks where the vocabulary
projection, which both modes pay every token, dominates the model. tokens/s is the best
of `--repeats` runs, the two modes alternating; the tokens of the two modes are checked
equal. Target: cache >= 5x full recomputation at 256 new tokens. `--json FILE` writes
`{name: {"value", "unit", "ratio_to", "target"}}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import figure, make_experts  # noqa: E402
from timoe_core.timeslices import TimeSlicing  # noqa: E402

from timoe_core.generate import generate_tokens  # noqa: E402
from timoe_core.model.mixture import TiMoE  # noqa: E402

TARGET_SPEEDUP = 5.0


def rate(model, prompt, query_date, new_tokens, use_cache) -> tuple[float, list[int]]:
    """(tokens/s, tokens) of one greedy generation."""
    r = generate_tokens(model, prompt, query_date=query_date, max_new_tokens=new_tokens,
                        greedy=True, use_cache=use_cache)
    return len(r.tokens) / r.seconds, r.tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repeat, mixture at 2016 only")
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "gpt2-124m"])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", default="32,256", help="comma-separated prompt lengths")
    ap.add_argument("--repeats", type=int, default=None, help="runs of each (default 2; quick 1)")
    ap.add_argument("--cases", default=None,
                    help="comma-separated among single,2016,2024 (default all; quick single,2016)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    prompt_lengths = [int(n) for n in args.prompt_tokens.split(",")]
    block = max(512, max(prompt_lengths) + args.new_tokens)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="timoe-bench-generate-") as tmp:
        wanted = (args.cases or ("single,2016" if args.quick else "single,2016,2024")).split(",")
        labels = [s.label for s in TimeSlicing().slices][: 6 if "2024" in wanted else 2]
        make_experts(Path(tmp), args.preset, labels, block_size=block)
        mix = TiMoE.from_expert_dirs([Path(tmp)])
        known = {"single": ("single_expert", None), "2016": ("mixture_2016", "2016"),
                 "2024": ("mixture_2024", "2024")}
        cases = [(known[c][0], mix.expert(mix.slices[0]) if c == "single" else mix, known[c][1])
                 for c in wanted]
        print(f"{args.preset} experts, block_size {block}, {args.new_tokens} new tokens, greedy, "
              f"threads {torch.get_num_threads()}, best of {repeats}")
        print(f"{'model':16s} {'prompt':>6s} {'cache tok/s':>12s} {'full tok/s':>12s} "
              f"{'speed-up':>9s}")
        for n_prompt in prompt_lengths:
            prompt = torch.randint(0, 50257, (n_prompt,),
                                   generator=torch.Generator().manual_seed(0)).tolist()
            for name, model, date in cases:
                generate_tokens(model, prompt, query_date=date, max_new_tokens=8)  # loads
                cached, full = 0.0, 0.0
                for _ in range(repeats):  # alternate the modes
                    c, tok_c = rate(model, prompt, date, args.new_tokens, True)
                    f, tok_f = rate(model, prompt, date, args.new_tokens, False)
                    if tok_c != tok_f:
                        sys.exit(f"{name}: cached and recomputed tokens differ")
                    cached, full = max(cached, c), max(full, f)
                print(f"{name:16s} {n_prompt:6d} {cached:12.1f} {full:12.1f} "
                      f"{cached / full:8.1f}x")
                key = f"generate_{name}_prompt{n_prompt}"
                figures[f"{key}_cache_tokens_per_s"] = figure(round(cached, 1), "tokens/s")
                figures[f"{key}_full_tokens_per_s"] = figure(round(full, 1), "tokens/s")
                figures[f"{key}_cache_speedup"] = figure(
                    round(cached / full, 2), "x", f"{key}_full_tokens_per_s", TARGET_SPEEDUP
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
