"""Test helpers shared by every engineer's tests (import as `from tests.helpers import ...`
or `from helpers import ...`; tests/ is on sys.path under pytest's rootdir conftest).

`make_data_dir` writes a valid prepared data dir (manifest.json + uint16 token files)
without the tokenizer or prepare-data, in milliseconds.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch

from timoe_core.data.manifest import (
    INDEX_DTYPE,
    MANIFEST_FILENAME,
    FileEntry,
    Manifest,
    SlicingSpec,
    SplitStats,
    YearStats,
    index_file_relpath,
    sha256_file,
    token_file_relpath,
)

GPT2_VOCAB = 50257
GPT2_EOT = 50256


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a test module (import it, then mark the module with
    `pytestmark = pytest.mark.usefixtures("one_thread")`): tiny CPU models run no
    slower, and timings do not collapse when other processes load the cores (OpenMP
    threads spin-waiting for a busy core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic_tokens(
    n: int,
    year: int,
    pattern: str = "cycle",
    period: int = 16,
    seed: int = 0,
    vocab_size: int = GPT2_VOCAB,
) -> np.ndarray:
    """`n` uint16 tokens for `year`.

    pattern "cycle": a fixed random sequence of `period` tokens (different per year),
    repeated: next-token prediction is learnable, so the loss falls quickly.
    pattern "random": uniform random tokens (only the unigram is learnable).
    """
    rng = np.random.default_rng([seed, year])
    hi = min(vocab_size, GPT2_EOT)  # keep clear of EOT
    if pattern == "cycle":
        motif = rng.integers(0, hi, size=period)
        out = np.resize(motif, n)
    elif pattern == "random":
        out = rng.integers(0, hi, size=n)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return out.astype(np.uint16)


def make_data_dir(
    tmp_path: Path,
    years: Iterable[int] = (2013, 2014),
    tokens_per_year: int = 4096,
    seq_len: int = 32,
    val_tokens_per_year: int | Mapping[int, int] | None = None,
    start_year: int = 2013,
    end_year: int = 2024,
    slice_years: int = 2,
    pattern: str = "cycle",
    period: int = 16,
    seed: int = 0,
    vocab_size: int = GPT2_VOCAB,
    name: str = "data",
    doc_dates: Literal["year", "spread"] = "year",
) -> Path:
    """A prepared data dir under `tmp_path/name` with train/val token files for `years`
    (val_tokens_per_year: one count, or {year: count}), each cut into documents of 256
    tokens with their .idx. doc_dates "year": every document dated by its year alone
    (Y-12-31, so every window of a year is dated Y-12-31); "spread": the documents'
    days spread evenly over the year, earliest first.

    The slicing (default 2013-2024 by 2) is independent of which years have tokens, so
    a slice without data is easy to make. Returns the data dir.
    """
    data_dir = Path(tmp_path) / name
    (data_dir / "train").mkdir(parents=True, exist_ok=True)
    (data_dir / "val").mkdir(parents=True, exist_ok=True)
    def val_tokens(year: int) -> int:
        if val_tokens_per_year is None:
            return tokens_per_year // 8
        if isinstance(val_tokens_per_year, Mapping):
            return val_tokens_per_year.get(year, 0)
        return val_tokens_per_year

    stats: dict[str, YearStats] = {}
    files: dict[str, FileEntry] = {}
    for year in sorted(set(years)):
        counts = {}
        for split, n, salt in (("train", tokens_per_year, 0), ("val", val_tokens(year), 1)):
            if n <= 0:
                counts[split] = SplitStats()
                continue
            tokens = synthetic_tokens(n, year, pattern, period, seed + salt, vocab_size)
            if pattern == "cycle" and split == "val":
                # Same motif as train, shifted: held-out text from the same process.
                tokens = np.roll(
                    synthetic_tokens(n + period, year, pattern, period, seed, vocab_size), 3
                )[:n]
            rel = token_file_relpath(split, year)
            path = data_dir / rel
            tokens.tofile(path)
            files[rel] = FileEntry(bytes=path.stat().st_size, sha256=sha256_file(path))
            n_docs = max(1, n // 256)
            index = np.zeros(n_docs, dtype=INDEX_DTYPE)
            index["tokens"] = n // n_docs
            index["tokens"][-1] += n - int(index["tokens"].sum())
            first, days = date(year, 1, 1), (date(year, 12, 31) - date(year, 1, 1)).days
            for i in range(n_docs):
                day = date(year, 12, 31) if doc_dates == "year" else (
                    first + timedelta(days=(i * days) // max(1, n_docs - 1)))
                index["time_us"][i] = (datetime(day.year, day.month, day.day, 12)
                                       - datetime(1970, 1, 1)) // timedelta(microseconds=1)
            index["hash"] = np.arange(n_docs, dtype=np.uint64)
            idx_rel = index_file_relpath(split, year)
            index.tofile(data_dir / idx_rel)
            files[idx_rel] = FileEntry(bytes=(data_dir / idx_rel).stat().st_size,
                                       sha256=sha256_file(data_dir / idx_rel))
            counts[split] = SplitStats(tokens=n, documents=n_docs)
        stats[str(year)] = YearStats(train=counts["train"], val=counts["val"])
    manifest = Manifest(
        tokenizer="gpt2",
        vocab_size=vocab_size,
        eot_token=vocab_size - 1,
        slicing=SlicingSpec(start_year=start_year, end_year=end_year, slice_years=slice_years),
        seq_len=seq_len,
        val_fraction=0.1,
        source="synthetic",
        years=stats,
        files=files,
    )
    (data_dir / MANIFEST_FILENAME).write_text(
        json.dumps(json.loads(manifest.model_dump_json()), indent=2) + "\n", encoding="utf-8"
    )
    return data_dir


def make_run(
    run_dir: Path, kind: str, label: str, cfg: Any, tokenizer: dict | None = None,
    init: Callable[[Any], None] | None = None,
) -> Path:
    """A run dir (run.json + model.safetensors) of `kind` ("expert" or "dense") for the
    slice `label`, holding GPT(cfg) as initialised (by `init(model)` when given)."""
    from timoe_core.model.gpt import GPT
    from timoe_core.model.run_info import RunInfo, write_run_info
    from timoe_core.model.weights import save_model_weights
    from timoe_core.timeslices import TimeSlice

    s = TimeSlice.from_label(label)
    model = GPT(cfg)
    if init is not None:
        init(model)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_model_weights(run_dir, model)
    tok = tokenizer or {"name": "gpt2", "vocab_size": GPT2_VOCAB, "eot_token": GPT2_EOT}
    write_run_info(run_dir, RunInfo(kind=kind, slice_label=label, start_date=s.start.isoformat(),
                                    end_date=s.end.isoformat(), model_config_=cfg,
                                    tokenizer=dict(tok)))
    return run_dir


def make_expert_runs(
    root: Path,
    labels: Iterable[str] | None = None,
    *,
    vocab_size: int = 128,
    block_size: int = 32,
    n_embd: int = 32,
    n_layer: int = 1,
    n_head: int = 2,
    scale: float = 0.3,
    seed: int = 0,
    tokenizer: dict | None = None,
) -> dict[str, Path]:
    """Random tiny expert run dirs (run.json + model.safetensors), one per slice label.

    labels: default every slice of TimeSlicing() (2013-2014 ... 2023-2024); leave some
    out for a missing slice. `scale` is the std of every weight: larger gives peakier,
    more distinct experts. No training. Returns {label: run dir}.
    """
    import torch

    from timoe_core.model.gpt import preset_config
    from timoe_core.timeslices import TimeSlicing

    cfg = preset_config(
        "tiny",
        vocab_size=vocab_size,
        block_size=block_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
    )
    labels = [s.label for s in TimeSlicing().slices] if labels is None else list(labels)
    gen = torch.Generator().manual_seed(seed)

    def init(model: Any) -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * scale)

    out = {}
    for label in labels:
        out[label] = make_run(Path(root) / label, "expert", label, cfg, tokenizer, init)
    return out


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`timoe ARGS` in this process through the real entry point: (exit code, stdout,
    stderr). `capsys` is pytest's fixture."""
    from timoe_cli.main import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["timoe", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def invoke_cli(*args):
    """`timoe ARGS` through Typer's CliRunner: the result's exit_code (also as returncode),
    stdout and stderr; an exception other than SystemExit is re-raised (a bug)."""
    from typer.testing import CliRunner

    from timoe_cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    result.returncode = result.exit_code
    return result


def write_jsonl(path: Path, rows: list, extra_lines: dict[int, str] | None = None) -> Path:
    """One JSON object per line; `extra_lines` {index: raw line} inserted as given."""
    lines = [json.dumps(r) for r in rows]
    for at, line in sorted((extra_lines or {}).items()):
        lines.insert(at, line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_mixture_inputs(
    root: Path, expert_years: Iterable[int] = (2013, 2015, 2017), steps: int = 30
) -> tuple[Path, Path]:
    """(data dir, experts dir) for router/coadapt tests: data for 2013-2018, each year a
    different repeating motif (vocab 128, windows of 32), and one tiny expert (1 layer,
    width 32) trained `steps` steps on each slice holding one of `expert_years`. The
    experts really differ: each predicts only its own slice's motifs well."""
    from timoe_core.config import TrainExpertConfig
    from timoe_core.train import train_expert

    data = make_data_dir(root, years=range(2013, 2019), tokens_per_year=1024, vocab_size=128)
    experts = Path(root) / "experts"
    for year in expert_years:
        train_expert(TrainExpertConfig(
            year=year, data=data, out=experts / str(year), n_layer=1, n_head=2, n_embd=32,
            seq_len=32, max_steps=steps, batch_size=8, lr=3e-3, device="cpu", log_every=steps,
            snapshots="none",
        ))
    return data, experts


# An lm-eval multiple-choice task over a local JSONL file of TSQA-style items (lm-eval's
# `json` loader reads it offline); fill in name= and path=.
LOCAL_QA_TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
