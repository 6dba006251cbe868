"""Benchmark of `timoe prepare-data` against the raw tokeniser ceiling.

    python benchmarks/prepare_data.py [--quick] [--json FILE] [--mb 48] [--repeats 3]

In one run, on the same text (a JSONL corpus written to a temp folder, from the
built-in corpus when `timoe_core.data.builtin` is there, otherwise synthetic English):

- ceiling: tiktoken `encode_ordinary_batch(texts, num_threads=all cores)` tokens/s on
  the texts already in memory;
- end-to-end: `prepare_data` from the JSONL file to a complete data dir (read, parse,
  dates, split hash, tokenise, write, checksums, manifest), tokens/s of the same text
  tokens (the EOTs it adds are not counted), in a child process whose peak RSS is
  reported (streaming: it must not grow with the corpus);
- bytes per token of the files written (uint16: must be 2.0).

Both rates are the best of `--repeats` alternating runs. The tokenizer is loaded before
timing in both. `--json FILE` writes `{name: {"value", "unit", "ratio_to", "target"}}`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
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

TARGET_RATIO = 0.7

_WORDS = (
    "the of and to in a is that for it as was with be by on not he I this are or his from at "
    "which but have an they you were her she there one all we their been has would when who "
    "will more no if out so said what up its about into than them can only other new some "
    "could time these two may then do first any my now such like our over man me even most "
    "made after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take "
    "three government company market city council report season election team school price "
    "policy research minister energy system network service health water public history "
    "announced reported according increased percent million billion quarter growth record"
).split()


def synthetic_documents(target_bytes: int, seed: int = 0):
    """Deterministic English-like documents (Zipf word choice, sentences, numbers)."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(_WORDS))]
    made = 0
    i = 0
    while made < target_bytes:
        year = 2013 + i % 12
        sentences = []
        for _ in range(rng.randint(8, 60)):
            words = rng.choices(_WORDS, weights, k=rng.randint(6, 24))
            if rng.random() < 0.3:
                words.insert(rng.randrange(len(words)), str(rng.randint(1, 2024)))
            sentences.append(" ".join(words).capitalize() + rng.choice(".,.;.!?"))
        text = " ".join(sentences)
        made += len(text)
        i += 1
        yield text, f"{year}-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00Z"


def builtin_or_synthetic(target_bytes: int):
    try:
        from timoe_core.data.builtin import builtin_documents
    except ImportError:
        builtin_documents = None
    if builtin_documents is not None:
        sample = list(builtin_documents(docs_per_year=20, seed=0))
        if sample:
            avg = sum(len(d.text) for d in sample) / len(sample)
            per_year = max(1, int(target_bytes / avg / 12) + 1)
            return "builtin corpus", (
                (d.text, d.date) for d in builtin_documents(docs_per_year=per_year, seed=0)
            )
    return "synthetic English", synthetic_documents(target_bytes)


def write_corpus(path: Path, target_bytes: int) -> tuple[str, int, int]:
    kind, docs = builtin_or_synthetic(target_bytes)
    n = size = 0
    with open(path, "w", encoding="utf-8") as f:
        for text, date in docs:
            line = json.dumps({"text": text, "date": date}) + "\n"
            f.write(line)
            n += 1
            size += len(line)
            if size >= target_bytes:
                break
    return kind, n, size


def measure_ceiling(texts: list[str], threads: int) -> tuple[int, float]:
    from timoe_core.tokenizer import get_tokenizer

    enc = get_tokenizer()._encoding  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    tokens = enc.encode_ordinary_batch(texts, num_threads=threads)
    dt = time.perf_counter() - t0
    return sum(map(len, tokens)), dt


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
    peak_kb = _proc_status_kb("VmHWM")  # this process's peak RSS (ru_maxrss survives exec)
    tokens = sum(s.train.tokens + s.val.tokens for s in m.years.values())
    docs = sum(s.train.documents + s.val.documents for s in m.years.values())
    n_bytes = sum(e.bytes for e in m.files.values())
    print(
        json.dumps(
            {
                "seconds": dt,
                "tokens": tokens,
                "documents": docs,
                "bytes": n_bytes,
                "rss_base_mib": base_kb / 1024,
                "rss_peak_mib": peak_kb / 1024,
            }
        )
    )


def measure_end_to_end(corpus: Path, out: Path, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(corpus), str(out), str(workers)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ.copy())
    if res.returncode != 0:
        sys.exit(f"end-to-end run failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 MB corpus, one repeat")
    ap.add_argument("--mb", type=float, default=None, help="corpus size in MB (default 48)")
    ap.add_argument("--repeats", type=int, default=None, help="runs of each (default 3)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    mb = args.mb if args.mb is not None else (8 if args.quick else 48)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    workers = args.workers

    with tempfile.TemporaryDirectory(prefix="timoe-bench-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        kind, n_docs, size = write_corpus(corpus, int(mb * 1e6))
        with open(corpus, encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]
        print(f"corpus: {n_docs:,} documents, {size / 1e6:.1f} MB of JSONL ({kind})")
        print(f"cores: {os.cpu_count()}, workers/threads: {workers}, repeats: {repeats}")
        ceiling, e2e = [], []
        for _ in range(repeats):
            n_tok, dt = measure_ceiling(texts, workers)
            ceiling.append(n_tok / dt)
            r = measure_end_to_end(corpus, Path(tmp) / "data", workers)
            text_tokens = r["tokens"] - r["documents"]  # without the EOTs
            if text_tokens != n_tok:
                sys.exit(f"token counts differ: ceiling {n_tok}, prepare-data {text_tokens}")
            e2e.append(text_tokens / r["seconds"])
    best_ceiling, best_e2e = max(ceiling), max(e2e)
    ratio = best_e2e / best_ceiling
    bytes_per_token = r["bytes"] / r["tokens"]
    figures = {
        "encode_ceiling_tokens_per_s": {
            "value": round(best_ceiling),
            "unit": "tokens/s",
            "ratio_to": None,
            "target": None,
        },
        "prepare_data_tokens_per_s": {
            "value": round(best_e2e),
            "unit": "tokens/s",
            "ratio_to": "encode_ceiling_tokens_per_s",
            "target": TARGET_RATIO,
        },
        "prepare_data_ratio_to_ceiling": {
            "value": round(ratio, 3),
            "unit": "ratio",
            "ratio_to": None,
            "target": TARGET_RATIO,
        },
        "prepare_data_bytes_per_token": {
            "value": bytes_per_token,
            "unit": "bytes/token",
            "ratio_to": None,
            "target": 2.0,
        },
        "prepare_data_peak_rss": {
            "value": round(r["rss_peak_mib"], 1),
            "unit": "MiB",
            "ratio_to": None,
            "target": None,
        },
        "prepare_data_rss_growth": {
            "value": round(r["rss_peak_mib"] - r["rss_base_mib"], 1),
            "unit": "MiB",
            "ratio_to": None,
            "target": None,
        },
    }
    print(f"tokens: {n_tok:,} (bytes of text per token {sum(map(len, texts)) / n_tok:.2f})")
    print(
        f"ceiling   encode_ordinary_batch : {best_ceiling / 1e6:6.2f} M tokens/s "
        f"(runs: {', '.join(f'{x / 1e6:.2f}' for x in ceiling)})"
    )
    print(
        f"end-to-end prepare_data (JSONL) : {best_e2e / 1e6:6.2f} M tokens/s "
        f"(runs: {', '.join(f'{x / 1e6:.2f}' for x in e2e)})"
    )
    print(f"ratio end-to-end / ceiling      : {ratio:6.3f}   (target >= {TARGET_RATIO})")
    print(f"bytes per token on disk         : {bytes_per_token:6.3f}   (target 2.0)")
    print(
        f"peak RSS of the prepare_data run: {r['rss_peak_mib']:6.1f} MiB "
        f"({r['rss_base_mib']:.1f} MiB after imports; corpus "
        f"{size / 2**20:.1f} MiB)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
