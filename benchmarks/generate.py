"""Benchmark of generation: decoding against the memory-bandwidth roofline.

    python -m benchmarks.generate [--quick] [--json FILE] [--preset small]
                                  [--eligible 1 2 6] [--prompt-tokens 256]
                                  [--new-tokens 64] [--repeats R] [--no-full]

Random experts of the `small` preset (6 layers, 384 wide, GPT-2 vocab 50304; `--preset`
to change) with a 512-token context, fp32 on CPU, greedy decoding with the KV cache of
`--new-tokens` tokens after a random prompt of `--prompt-tokens`, through the avg
mixture at the query date that makes 1, 2 and 6 of the six experts eligible (2014,
2016, 2024).

A decoding step reads every weight of every eligible expert once (the blocks, the final
LayerNorm, the vocabulary projection) and its KV cache; nothing is reused between tokens,
so the step is bound by memory bandwidth. The roofline is

    tokens/s <= bandwidth / (eligible experts x (weight bytes + KV-cache bytes at the
                              mean context))

with the bandwidth measured in the same rounds as the decoding: the best of a large
contiguous copy (bytes read + bytes written), a read-only sum, and an fp32
matrix-vector product, through the experts' own `Linear`, of a weight far larger than
the caches (bytes of the weight). The fraction against the matrix-vector product alone
is reported too: it separates what the decoding loses around its products from what
the product kernel itself leaves of the memory's bandwidth. Decode tokens/s count the
tokens after the first (the prompt's forward pass is excluded). Each round runs every
side once (order rotated, after a warm-up); the fraction is the median of the per-round
fractions. Target: >= 50% of the roofline.

Without --no-full (and without --quick) the 2-expert case is also decoded by full
recomputation of the context every token (`use_cache=False`) and the tokens checked
equal: the cache's speed-up, no target.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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
    sync,
    write_json,
)
from timoe_core.generate import generate_tokens
from timoe_core.model.gpt import GPT, Linear
from timoe_core.model.mixture import TiMoE
from timoe_core.timeslices import TimeSlicing

TARGET_FRACTION = 0.5
QUERY_DATES = {1: "2014", 2: "2016", 6: "2024"}  # eligible experts of the default slicing
BANDWIDTH_BYTES = 256 << 20  # per buffer: far beyond any cache


def decode_bytes_per_token(expert: GPT, context: float) -> float:
    """Bytes one decoding step of `expert` must read at `context` cached positions: every
    parameter except the two embedding tables (of which a step reads one row each), the
    tied output projection once, and the keys and values of every layer."""
    c = expert.config
    elem = expert.lm_head.weight.element_size()
    params = sum(p.numel() for p in expert.parameters())  # the tied table counted once
    params -= expert.wpe.weight.numel()  # one row of it is read, as one of the token table
    weights = (params + 2 * c.n_embd) * elem
    kv = 2 * c.n_layer * context * c.n_embd * elem
    return weights + kv


class Bandwidth:
    """Memory bandwidth three ways (a copy, a read-only sum, a matrix-vector product);
    each call is one measurement, bytes/s = the method's bytes / its seconds."""

    def __init__(self, nbytes: int = BANDWIDTH_BYTES, device: str | torch.device = "cpu") -> None:
        n = nbytes // 4
        self.device = torch.device(device)
        self.src = torch.rand(n, device=self.device)
        self.dst = torch.empty(n, device=self.device)
        cols = 4096
        self.linear = Linear(cols, n // cols, bias=False, device=self.device)
        self.linear.requires_grad_(False)
        self.vector = torch.rand(1, cols, device=self.device)

    def _best(self, fn, times: int = 3) -> Measured:
        """The fastest of a few back-to-back calls: the bandwidth the machine can give."""
        best = float("inf")
        for _ in range(times):
            sync(self.device)
            t0 = time.perf_counter()
            fn()
            sync(self.device)
            best = min(best, time.perf_counter() - t0)
        return Measured(best)

    def copy(self) -> Measured:
        return self._best(lambda: self.dst.copy_(self.src))

    def copy_bytes(self) -> int:
        return 2 * self.src.numel() * 4  # read + write

    def read(self) -> Measured:
        return self._best(lambda: self.src.sum())

    def read_bytes(self) -> int:
        return self.src.numel() * 4

    def matvec(self) -> Measured:
        return self._best(lambda: self.linear(self.vector))

    def matvec_bytes(self) -> int:
        return self.linear.weight.numel() * 4


def run(
    quick: bool = False,
    *,
    preset: str = "small",
    eligible: Sequence[int] | None = None,
    prompt_tokens: int = 256,
    new_tokens: int | None = None,
    repeats: int | None = None,
    full: bool | None = None,
    device: str = "cpu",
    prefix: str = "generate",
) -> Figures:
    """Decode tokens/s against the bandwidth roofline for each number of eligible experts
    (figures named `prefix`_...; the GPU section runs this on CUDA)."""
    eligible = list(eligible or QUERY_DATES)
    unknown = [n for n in eligible if n not in QUERY_DATES]
    if unknown:
        raise ValueError(f"--eligible {unknown[0]}: use some of {list(QUERY_DATES)}")
    new_tokens = new_tokens or (32 if quick else 64)
    repeats = repeats or (2 if quick else 3)
    full = (not quick) if full is None else full
    block = max(512, prompt_tokens + new_tokens)
    f: Figures = {}
    with tempfile.TemporaryDirectory(prefix="timoe-bench-generate-") as tmp:
        labels = [s.label for s in TimeSlicing().slices][: max(eligible)]
        make_experts(Path(tmp), preset, labels, block_size=block)
        mix = TiMoE.from_expert_dirs([Path(tmp)], device=device)
        prompt = torch.randint(0, 50257, (prompt_tokens,),
                               generator=torch.Generator().manual_seed(0)).tolist()
        bw = Bandwidth(device=device)
        mean_context = prompt_tokens + new_tokens / 2
        per_expert = decode_bytes_per_token(mix.expert(mix.slices[0]), mean_context)
        print(f"{prefix}: {preset} experts on {device}, block_size {block}, prompt "
              f"{prompt_tokens}, {new_tokens} new tokens, greedy, "
              f"threads {torch.get_num_threads()}, "
              f"{repeats} rounds; {per_expert / 1e6:.1f} MB read per expert and token")
        tokens: dict[str, list[int]] = {}

        def decode(n: int, use_cache: bool = True):
            def side() -> Measured:
                r = generate_tokens(mix, prompt, query_date=QUERY_DATES[n], greedy=True,
                                    max_new_tokens=new_tokens, use_cache=use_cache)
                if len(r.tokens) != new_tokens or len(r.experts) != n:
                    raise RuntimeError(f"{n} eligible: {len(r.tokens)} tokens from "
                                       f"{r.experts}, not {new_tokens} from {n} experts")
                key = f"{n}-{use_cache}"
                if tokens.setdefault(key, r.tokens) != r.tokens:
                    raise RuntimeError(f"{n} eligible: greedy decoding is not deterministic")
                # decode time per token after the first, as a time for the rounds
                return Measured((new_tokens - 1) / r.decode_tokens_per_s)
            return side

        sides = {"copy": bw.copy, "read": bw.read, "matvec": bw.matvec}
        sides |= {f"decode_{n}": decode(n) for n in eligible}
        if full:
            sides["full_2"] = decode(2, use_cache=False)
        for n in eligible:  # loads the experts, untimed
            generate_tokens(mix, prompt, query_date=QUERY_DATES[n], max_new_tokens=4)
        r = interleaved_rounds(sides, repeats, warmup=1, device=device)
        copy_bw = [bw.copy_bytes() / s for s in r.seconds["copy"]]
        read_bw = [bw.read_bytes() / s for s in r.seconds["read"]]
        matvec_bw = [bw.matvec_bytes() / s for s in r.seconds["matvec"]]
        best_bw = [max(a, b, c) for a, b, c in zip(copy_bw, read_bw, matvec_bw)]
        print(f"  bandwidth: copy {fmt_runs(copy_bw, 1e-9)} GB/s, read "
              f"{fmt_runs(read_bw, 1e-9)} GB/s, matvec {fmt_runs(matvec_bw, 1e-9)} GB/s")
        f[f"{prefix}_bandwidth_copy_bytes_per_s"] = figure(round(_median(copy_bw)), "bytes/s")
        f[f"{prefix}_bandwidth_read_bytes_per_s"] = figure(round(_median(read_bw)), "bytes/s")
        f[f"{prefix}_bandwidth_matvec_bytes_per_s"] = figure(round(_median(matvec_bw)),
                                                            "bytes/s")
        f[f"{prefix}_decode_bytes_per_expert_token"] = figure(round(per_expert), "bytes")
        for n in eligible:
            steps = new_tokens - 1
            rates = [steps / s for s in r.seconds[f"decode_{n}"]]
            roof = [b / (n * per_expert) for b in best_bw]
            fraction = _median([a / b for a, b in zip(rates, roof)])
            matvec_roof = [b / (n * per_expert) for b in matvec_bw]
            of_matvec = _median([a / b for a, b in zip(rates, matvec_roof)])
            print(f"  {n} eligible: decode {fmt_runs(rates)} tokens/s, roofline "
                  f"{fmt_runs(roof)} tokens/s: {fraction:.0%} (target >= {TARGET_FRACTION:.0%}); "
                  f"{of_matvec:.0%} of what the matrix-vector product streams")
            key = f"{prefix}_{n}_eligible"
            f[f"{key}_decode_tokens_per_s"] = figure(round(_median(rates), 1), "tokens/s")
            f[f"{key}_roofline_tokens_per_s"] = figure(round(_median(roof), 1), "tokens/s")
            f[f"{key}_fraction_of_roofline"] = figure(
                round(fraction, 3), "fraction", f"{key}_roofline_tokens_per_s",
                TARGET_FRACTION, ">=")
            f[f"{key}_fraction_of_matvec_bandwidth"] = figure(
                round(of_matvec, 3), "fraction", f"{prefix}_bandwidth_matvec_bytes_per_s")
        if full:
            if tokens["2-True"] != tokens["2-False"]:
                raise RuntimeError("cached and recomputed tokens differ")
            speedup = r.median_ratio("full_2", "decode_2")
            full_tps = (new_tokens - 1) / r.median("full_2")
            print(f"  2 eligible, full recomputation: {full_tps:.1f} tokens/s; "
                  f"cache {speedup:.1f}x")
            f[f"{prefix}_2_eligible_full_recompute_tokens_per_s"] = figure(round(full_tps, 1),
                                                                          "tokens/s")
            f[f"{prefix}_2_eligible_cache_speedup"] = figure(
                round(speedup, 2), "x", f"{prefix}_2_eligible_full_recompute_tokens_per_s")
    return f


def _median(values: Sequence[float]) -> float:
    import statistics

    return statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="32 new tokens, 2 rounds, no full-recomputation case")
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "gpt2-124m"])
    ap.add_argument("--eligible", type=int, nargs="+", default=None,
                    help=f"eligible experts per case (default {' '.join(map(str, QUERY_DATES))})")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=None, help="default 64 (quick 32)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 3; quick 2)")
    ap.add_argument("--no-full", action="store_true",
                    help="skip the full-recomputation comparison")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    figures = run(args.quick, preset=args.preset, eligible=args.eligible,
                  prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                  repeats=args.repeats, full=False if args.no_full else None)
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
