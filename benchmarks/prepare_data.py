"""Benchmark of `timoe prepare-data` against the raw tokeniser ceiling.

    python -m benchmarks.prepare_data [--quick] [--json FILE] [--mb 32] [--repeats 3]

In one run, on the same text (the built-in corpus written as JSONL to a temp folder):

- ceiling: tiktoken `encode_ordinary_batch(texts, num_threads=all cores)` tokens/s on
  the texts already in memory;
- encoder: tiktoken's `encode_to_numpy`, the call prepare-data makes per document, on
  the same texts and threads: the tokeniser's own rate, without the Python int per
  token that the batch encoder builds (no target; the ratio to it is what is left of
  the tokeniser's rate end to end);
- end-to-end: `prepare_data` from the JSONL file to a complete data dir (read, parse,
  dates, split hash, tokenise, write, checksums, manifest), tokens/s of the same text
  tokens (the EOTs it adds are not counted), in a child process whose peak RSS is
  reported (streaming: it must not grow with the corpus);
- bytes per token of the token files written (uint16: must be 2.0), and apart those of
  the per-document index (each document's date and length).

Scaling: the same two with 1 worker / thread and with every core. Each round runs
every variant once, the order rotated between rounds; rates are medians over rounds and
ratios medians of the per-round ratios. The tokenizer is loaded before timing in both;
the end-to-end time is taken inside the child (interpreter start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

from benchmarks.common import Figures, Measured, figure, fmt_runs, interleaved_rounds, write_json
from timoe_core.data.builtin import YEARS, builtin_documents

TARGET_RATIO = 0.7


def write_corpus(path: Path, target_bytes: int) -> tuple[int, int]:
    """About `target_bytes` of the built-in corpus as JSONL: (documents, bytes)."""
    sample = list(builtin_documents(docs_per_year=20, seed=0))
    avg = sum(len(d.text) for d in sample) / len(sample)
    per_year = max(1, int(target_bytes / avg / len(YEARS)) + 1)
    n = size = 0
    with open(path, "w", encoding="utf-8") as f:
        for d in builtin_documents(docs_per_year=per_year, seed=0):
            line = json.dumps({"text": d.text, "date": d.date}) + "\n"
            f.write(line)
            n += 1
            size += len(line)
            if size >= target_bytes:
                break
    return n, size


def measure_ceiling(texts: list[str], threads: int) -> int:
    """Tokens of `texts` from tiktoken's batch encoder on `threads` threads."""
    from timoe_core.tokenizer import get_tokenizer

    enc = get_tokenizer()._encoding  # type: ignore[attr-defined]
    return sum(map(len, enc.encode_ordinary_batch(texts, num_threads=threads)))


def measure_encoder(texts: list[str], threads: int) -> int:
    """Tokens of `texts` from the call prepare-data makes per document, tiktoken's
    `encode_to_numpy` (one buffer per text, where the batch encoder builds a Python int
    per token, which costs more than the BPE itself), on `threads` threads, each on an
    interleaved share of the texts."""
    from timoe_core.tokenizer import get_tokenizer

    enc = get_tokenizer()._encoding  # type: ignore[attr-defined]

    def encode(share: list[str]) -> int:
        return sum(len(enc.encode_to_numpy(t, disallowed_special=())) for t in share)

    if threads == 1:
        return encode(texts)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(encode, [texts[i::threads] for i in range(threads)]))


def _proc_status_kb(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    return float("nan")


def child(corpus: str, out: str, workers: int) -> None:
    """One end-to-end run in a fresh process; prints a JSON line."""
    from timoe_core.config import PrepareDataConfig
    from timoe_core.data.prepare import prepare_data
    from timoe_core.tokenizer import get_tokenizer

    get_tokenizer()  # loaded before timing, as for the ceiling
    base_kb = _proc_status_kb("VmRSS")
    cfg = PrepareDataConfig(source=corpus, out=Path(out), workers=workers, overwrite=True)
    t0 = time.perf_counter()
    m = prepare_data(cfg)
    dt = time.perf_counter() - t0
    peak_kb = _proc_status_kb("VmHWM")  # this process's peak RSS
    print(json.dumps({
        "seconds": dt,
        "tokens": sum(s.train.tokens + s.val.tokens for s in m.years.values()),
        "documents": sum(s.train.documents + s.val.documents for s in m.years.values()),
        # the token files (uint16) and, apart, each year's per-document index (dates)
        "bytes": sum(e.bytes for rel, e in m.files.items() if rel.endswith(".bin")),
        "index_bytes": sum(e.bytes for rel, e in m.files.items() if rel.endswith(".idx")),
        "rss_base_mib": base_kb / 1024,
        "rss_peak_mib": peak_kb / 1024,
    }))


def measure_end_to_end(corpus: Path, out: Path, workers: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.prepare_data", "--child", str(corpus), str(out),
           str(workers)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         cwd=Path(__file__).resolve().parents[1])
    if res.returncode != 0:
        raise RuntimeError(f"end-to-end prepare-data run failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(quick: bool = False, *, mb: float | None = None, repeats: int | None = None) -> Figures:
    """Ceiling and end-to-end, with every core and with one, on one corpus."""
    mb = mb if mb is not None else (6 if quick else 32)
    repeats = repeats or 3
    cores = os.cpu_count() or 1
    counts = sorted({1, cores})
    with tempfile.TemporaryDirectory(prefix="timoe-bench-prepare-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        n_docs, size = write_corpus(corpus, int(mb * 1e6))
        with open(corpus, encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]
        n_tok = measure_ceiling(texts, cores)  # also loads the tokenizer
        print(f"prepare_data: {n_docs:,} documents, {size / 1e6:.1f} MB of JSONL (built-in corpus), "
              f"{n_tok:,} tokens ({sum(map(len, texts)) / n_tok:.2f} bytes of text each); "
              f"{cores} cores, {repeats} rounds")
        last: dict = {}

        def end_to_end(workers: int) -> Measured:
            r = measure_end_to_end(corpus, Path(tmp) / f"data{workers}", workers)
            if r["tokens"] - r["documents"] != n_tok:  # the EOTs it adds are not text tokens
                raise RuntimeError(f"token counts differ: ceiling {n_tok}, prepare-data "
                                   f"{r['tokens'] - r['documents']}")
            last[workers] = r
            return Measured(r["seconds"])

        sides = {}
        for n in counts:
            sides[f"ceiling {n}"] = lambda n=n: measure_ceiling(texts, n)
            sides[f"encoder {n}"] = lambda n=n: measure_encoder(texts, n)
            sides[f"prepare {n}"] = lambda n=n: end_to_end(n)
        rounds = interleaved_rounds(sides, repeats, warmup=0)
    f: Figures = {}
    for n in counts:
        # Names say "all" for every core (2 here, more elsewhere) so that runs on
        # different machines compare; the core count is in the run record.
        w = "all" if n == cores else "1"
        ceiling, e2e = rounds.rates(f"ceiling {n}", n_tok), rounds.rates(f"prepare {n}", n_tok)
        ratio = rounds.median_ratio(f"ceiling {n}", f"prepare {n}")
        encoder = rounds.rates(f"encoder {n}", n_tok)
        of_encoder = rounds.median_ratio(f"encoder {n}", f"prepare {n}")
        print(f"  {n} thread(s)/worker(s): ceiling {median(ceiling) / 1e6:.2f} M tokens/s "
              f"(rounds {fmt_runs(ceiling, 1e-6, 2)}); prepare-data {median(e2e) / 1e6:.2f} M "
              f"tokens/s (rounds {fmt_runs(e2e, 1e-6, 2)}); ratio {ratio:.3f}; encoder "
              f"{median(encoder) / 1e6:.2f} M tokens/s, prepare-data / encoder {of_encoder:.3f}")
        f[f"encode_ceiling_{w}_threads_tokens_per_s"] = figure(round(median(ceiling)), "tokens/s")
        f[f"prepare_data_{w}_workers_tokens_per_s"] = figure(round(median(e2e)), "tokens/s")
        f[f"prepare_data_{w}_workers_ratio_to_ceiling"] = figure(
            round(ratio, 3), "x", f"encode_ceiling_{w}_threads_tokens_per_s",
            TARGET_RATIO if w == "all" else None, ">=" if w == "all" else None)
        f[f"encode_to_numpy_{w}_threads_tokens_per_s"] = figure(round(median(encoder)),
                                                               "tokens/s")
        f[f"prepare_data_{w}_workers_ratio_to_encoder"] = figure(
            round(of_encoder, 3), "x", f"encode_to_numpy_{w}_threads_tokens_per_s")
    if len(counts) > 1:
        f["prepare_data_speedup_all_workers_vs_1"] = figure(
            round(rounds.median_ratio("prepare 1", f"prepare {cores}"), 3), "x",
            "prepare_data_1_workers_tokens_per_s")
        f["encode_ceiling_speedup_all_threads_vs_1"] = figure(
            round(rounds.median_ratio("ceiling 1", f"ceiling {cores}"), 3), "x",
            "encode_ceiling_1_threads_tokens_per_s")
    r = last[cores]
    f["prepare_data_bytes_per_token"] = figure(r["bytes"] / r["tokens"], "bytes/token",
                                               None, 2.0, "==")
    f["prepare_data_index_bytes_per_token"] = figure(
        round(r["index_bytes"] / r["tokens"], 4), "bytes/token")
    f["prepare_data_peak_rss_mib"] = figure(round(r["rss_peak_mib"], 1), "MiB")
    f["prepare_data_rss_growth_mib"] = figure(round(r["rss_peak_mib"] - r["rss_base_mib"], 1),
                                              "MiB")
    f["prepare_data_corpus_mib"] = figure(round(size / 2**20, 1), "MiB")
    print(f"  bytes per token of the token files {r['bytes'] / r['tokens']:.3f} (target 2.0), "
          f"of the per-document index {r['index_bytes'] / r['tokens']:.3f}; peak RSS "
          f"{r['rss_peak_mib']:.1f} MiB ({r['rss_base_mib']:.1f} after imports) for a "
          f"{size / 2**20:.1f} MiB corpus")
    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 MB corpus")
    ap.add_argument("--mb", type=float, default=None, help="corpus size in MB (default 32)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 3)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    figures = run(args.quick, mb=args.mb, repeats=args.repeats)
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
