"""`timoe prepare-data`: output format, split, shards and merge, atomicity, bad input."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, write_jsonl
from kill_harness import kill_when

from timoe_core.config import PrepareDataConfig
from timoe_core.data.batches import text_hash
from timoe_core.data.manifest import INDEX_DTYPE, load_manifest, sha256_file
from timoe_core.data.prepare import prepare_data
from timoe_core.data.split import is_val
from timoe_core.data.windows import TokenWindows
from timoe_core.errors import TimoeError
from timoe_core.tokenizer import get_tokenizer

EOT = 50256
WORDS = "the river council market election school price energy team city report year".split()


def make_docs(n: int, seed: int = 0, years=range(2013, 2025)) -> list[dict]:
    rng = random.Random(seed)
    years = list(years)
    docs = []
    for i in range(n):
        year = years[i % len(years)]
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
        docs.append(
            {"text": f"Doc {i} of {year}. {body.capitalize()}.", "date": f"{year}-04-01T10:00:00Z"}
        )
    return docs


def prep(source, out, **kw) -> object:
    kw.setdefault("workers", 2)
    return prepare_data(PrepareDataConfig(source=str(source), out=out, **kw))


def read_docs(data_dir: Path, split: str, year: int) -> list[str]:
    """The documents of a token file, decoded back (split on EOT)."""
    path = data_dir / split / f"{year}.bin"
    if not path.exists():
        return []
    tokens = np.fromfile(path, dtype="<u2")
    assert len(tokens) and tokens[-1] == EOT  # every document is followed by EOT
    cuts = np.flatnonzero(tokens == EOT)
    tok = get_tokenizer()
    docs, start = [], 0
    for c in cuts:
        docs.append(tok.decode(tokens[start:c].tolist()))
        start = c + 1
    return docs


def all_docs(data_dir: Path) -> dict[tuple[str, int], list[str]]:
    m = load_manifest(data_dir)
    return {
        (split, int(y)): read_docs(data_dir, split, int(y))
        for y in m.years
        for split in ("train", "val")
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    d = tmp_path_factory.mktemp("corpus")
    docs = make_docs(600)
    return write_jsonl(d / "news.jsonl", docs), docs


# ------------------------------------------------------------------ end to end


def test_user_jsonl_with_iso_timestamps_through_the_cli(tmp_path, corpus):
    """The headline case, through the installed entry point in a fresh process."""
    src, docs = corpus
    out = tmp_path / "data"
    env = dict(os.environ)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "timoe_cli",
            "prepare-data",
            "--source",
            str(src),
            "--out",
            str(out),
            "--val-fraction",
            "0.1",
            "--seq-len",
            "64",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert res.returncode == 0, res.stderr
    assert "tokens per year" in res.stdout and "2019" in res.stdout
    m = load_manifest(out, verify="sha256")
    assert m.years_with_tokens("train") == list(range(2013, 2025))
    assert sum(s.train.documents + s.val.documents for s in m.years.values()) == len(docs)
    assert m.skipped == {"out_of_range": 0, "empty": 0, "bad_rows": 0}
    assert (out / "config.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging left behind


def test_tokens_decode_back_to_the_documents_joined_by_eot(tmp_path, corpus):
    src, docs = corpus
    out = tmp_path / "data"
    m = prep(src, out, val_fraction=0.2)
    tok = get_tokenizer()
    got = all_docs(out)
    for (split, year), texts in got.items():
        expected = [
            d["text"]
            for d in docs
            if d["date"].startswith(str(year)) and is_val(d["text"], 0.2) == (split == "val")
        ]
        # in (date, text hash) order, not the source's
        expected.sort(key=lambda t: text_hash(t))
        assert texts == expected, (split, year)
        n_tokens = sum(len(tok.encode(t)) + 1 for t in expected)
        assert getattr(m.years[str(year)], split).tokens == n_tokens
        assert getattr(m.years[str(year)], split).documents == len(expected)
    for rel, entry in m.files.items():  # checksums and sizes match the files
        split, name = rel.split("/")
        assert entry.sha256 == sha256_file(out / rel)
        year, kind = name.split(".")
        stats = getattr(m.years[year], split)
        if kind == "bin":
            assert entry.bytes == (out / rel).stat().st_size == 2 * stats.tokens
        else:  # one index record per document: its date, text hash and token count
            index = np.fromfile(out / rel, dtype=INDEX_DTYPE)
            assert len(index) == stats.documents and index["tokens"].sum() == stats.tokens
            assert (np.diff(index["time_us"]) >= 0).all()


def test_special_token_text_is_plain_text_and_surrogates_survive(tmp_path):
    rows = [
        {"text": "before <|endoftext|> after", "date": 2015},
        {"text": "lone \ud800 surrogate", "date": 2015},
    ]
    src = tmp_path / "a.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "data"
    prep(src, out, val_fraction=0.5, start_year=2015, end_year=2015)
    tokens = np.concatenate([np.fromfile(p, dtype="<u2") for p in sorted(out.glob("*/2015.bin"))])
    assert int((tokens == EOT).sum()) == 2  # only the separators: the text's is plain text
    assert "before <|endoftext|> after" in sum(all_docs(out).values(), [])


def test_split_is_stable_and_near_val_fraction(tmp_path):
    docs = make_docs(4000, seed=1)
    src = write_jsonl(tmp_path / "big.jsonl", docs)
    m1 = prep(src, tmp_path / "a", val_fraction=0.1)
    m2 = prep(src, tmp_path / "b", val_fraction=0.1, workers=1)
    assert m1.files == m2.files  # same bytes, whatever the threads
    val = sum(s.val.documents for s in m1.years.values())
    assert 0.08 * len(docs) < val < 0.12 * len(docs)
    # the split follows the text, not the position or the run
    shuffled = docs[::-1]
    m3 = prep(write_jsonl(tmp_path / "rev.jsonl", shuffled), tmp_path / "c", val_fraction=0.1)
    assert {y: s.val.documents for y, s in m3.years.items()} == {
        y: s.val.documents for y, s in m1.years.items()
    }


def test_shards_merge_to_the_unsharded_run(tmp_path, corpus, capsys):
    src, _ = corpus
    whole = prep(src, tmp_path / "whole", val_fraction=0.1, seq_len=32)
    for k in range(2):
        code, _, err = run_cli(
            capsys,
            "prepare-data",
            "--source",
            src,
            "--out",
            tmp_path / f"s{k}",
            "--val-fraction",
            "0.1",
            "--seq-len",
            "32",
            "--num-shards",
            "2",
            "--shard-index",
            k,
        )
        assert code == 0, err
    shard0 = load_manifest(tmp_path / "s0")
    assert shard0.shards[0].num_shards == 2
    code, out, err = run_cli(
        capsys, "prepare-data", "--merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m"
    )
    assert code == 0, err
    merged = load_manifest(tmp_path / "m", verify="sha256")
    assert merged.years == whole.years  # token and document counts per year and split
    assert merged.skipped == whole.skipped
    assert sorted((s.num_shards, s.shard_index) for s in merged.shards) == [(2, 0), (2, 1)]
    a, b = all_docs(tmp_path / "whole"), all_docs(tmp_path / "m")
    assert {k: Counter(v) for k, v in a.items()} == {k: Counter(v) for k, v in b.items()}
    assert (tmp_path / "m" / "config.yaml").is_file()

    # the same shard twice, or data prepared differently, is refused
    code, _, err = run_cli(
        capsys, "prepare-data", "--merge", tmp_path / "s0", tmp_path / "s0", "--out", tmp_path / "x"
    )
    assert code == 2 and "given twice" in err
    prep(src, tmp_path / "s0b", val_fraction=0.1, seq_len=32, num_shards=2, shard_index=0)
    code, _, err = run_cli(
        capsys,
        "prepare-data",
        "--merge",
        tmp_path / "s0",
        tmp_path / "s0b",
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and "would duplicate documents" in err
    code, _, err = run_cli(
        capsys,
        "prepare-data",
        "--merge",
        tmp_path / "s0",
        tmp_path / "whole",
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and "would duplicate documents" in err
    prep(src, tmp_path / "other", val_fraction=0.1, seq_len=64, num_shards=2, shard_index=1)
    code, _, err = run_cli(
        capsys,
        "prepare-data",
        "--merge",
        tmp_path / "s0",
        tmp_path / "other",
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and "seq_len differ" in err
    assert not (tmp_path / "x").exists()


def test_merge_refuses_a_corrupted_input(tmp_path, corpus):
    src, _ = corpus
    prep(src, tmp_path / "s0", num_shards=2, shard_index=0)
    prep(src, tmp_path / "s1", num_shards=2, shard_index=1)
    f = tmp_path / "s1" / "train" / "2016.bin"
    data = bytearray(f.read_bytes())
    data[0] ^= 1
    f.write_bytes(data)
    cfg = PrepareDataConfig(merge=[tmp_path / "s0", tmp_path / "s1"], out=tmp_path / "m")
    with pytest.raises(TimoeError, match="2016.bin fails its sha256 check"):
        prepare_data(cfg)
    assert not (tmp_path / "m").exists()


def test_token_windows_read_the_output(tmp_path, corpus):
    src, _ = corpus
    out = tmp_path / "data"
    m = prep(src, out, seq_len=16)
    w = TokenWindows(out, "train", [2017, 2018], seq_len=16)
    assert len(w) == sum((m.tokens(y) - 1) // 16 for y in (2017, 2018))
    x = w[0]
    assert x.shape == (17,) and w.year_of(0) == 2017 and w.year_of(len(w) - 1) == 2018
    first = np.fromfile(out / "train" / "2017.bin", dtype="<u2")[:17]
    assert x.tolist() == first.tolist()
    rows, years = w.batch([0, len(w) - 1])
    assert rows.shape == (2, 17) and years.tolist() == [2017, 2018]


def test_out_of_range_and_empty_documents_are_counted(tmp_path):
    rows = make_docs(30) + [
        {"text": "too old", "date": 2001},
        {"text": "too new", "date": "2031-01-01"},
        {"text": "", "date": 2015},
        {"text": "   \n", "date": 2015},
        {"text": None, "date": 2015},
    ]
    src = write_jsonl(tmp_path / "a.jsonl", rows, {3: "{broken"})
    m = prep(src, tmp_path / "data", skip_bad_rows=True)
    assert m.skipped == {"out_of_range": 2, "empty": 3, "bad_rows": 1}
    assert sum(s.train.documents + s.val.documents for s in m.years.values()) == 30
    m = prep(src, tmp_path / "narrow", skip_bad_rows=True, start_year=2015, end_year=2016)
    assert (
        sorted(m.years) == ["2015", "2016"] and m.skipped["out_of_range"] == 2 + 24
    )  # 6 of the 30 are 2015-16


def test_every_date_form_in_one_file(tmp_path):
    dates = [
        2014,
        "2015",
        "2016-03-04",
        "2017-05",
        "2018-04-01T10:00:00Z",
        1577836800 + 86400,
        "1609459200",
        "2022-07-01 12:00:00+02:00",
    ]
    rows = [{"text": f"doc {i}", "date": d} for i, d in enumerate(dates)]
    m = prep(write_jsonl(tmp_path / "a.jsonl", rows), tmp_path / "data", val_fraction=0.5)
    years = {int(y) for y, s in m.years.items() if s.train.documents + s.val.documents}
    assert years == {2014, 2015, 2016, 2017, 2018, 2020, 2021, 2022}


def test_max_docs_and_progress(tmp_path, corpus):
    src, _ = corpus  # 50 documents a year
    seen = []
    m = prepare_data(
        PrepareDataConfig(source=str(src), out=tmp_path / "d", max_docs=20, workers=2),
        progress_callback=seen.append,
    )
    # --max-docs is a cap per year: 20 of each year's 50
    assert {y: s.train.documents + s.val.documents for y, s in m.years.items()} == {
        str(y): 20 for y in range(2013, 2025)}
    assert m.max_docs == 20 and m.skipped["over_max_docs"] == 12 * 30
    assert seen and seen[-1].documents == 240  # the last report: what was written
    assert seen[-1].tokens == sum(s.train.tokens + s.val.tokens for s in m.years.values())
    assert seen[-1].bytes_read == seen[-1].total_bytes == src.stat().st_size
    reading = seen[:-1]
    assert all(a.tokens <= b.tokens for a, b in zip(reading, reading[1:]))


def test_overwrite_replaces_a_data_dir_only_when_done(tmp_path, corpus, capsys):
    src, _ = corpus
    out = tmp_path / "data"
    prep(src, out, max_docs=50)
    code, _, err = run_cli(capsys, "prepare-data", "--source", src, "--out", out, "--overwrite")
    assert code == 0, err
    assert (
        sum(s.train.documents + s.val.documents for s in load_manifest(out).years.values()) == 600
    )
    # a failing --overwrite run leaves the old data in place
    bad = write_jsonl(tmp_path / "bad.jsonl", make_docs(5), {4: "nope"})
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run_cli(capsys, "prepare-data", "--source", bad, "--out", out, "--overwrite")
    assert code == 2 and "bad.jsonl:5" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # --overwrite never deletes a folder that is not a data dir
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    code, _, err = run_cli(capsys, "prepare-data", "--source", src, "--out", other, "--overwrite")
    assert code == 2 and "not a prepared data dir" in err
    assert (other / "thesis.tex").read_text() == "precious"
    # an empty folder is fine without --overwrite
    (tmp_path / "empty").mkdir()
    assert run_cli(capsys, "prepare-data", "--source", src, "--out", tmp_path / "empty")[0] == 0


def test_an_interrupted_run_leaves_nothing(tmp_path, corpus):
    src, _ = corpus
    out = tmp_path / "data"

    def interrupt(progress):
        if progress.documents:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_data(PrepareDataConfig(source=str(src), out=out), progress_callback=interrupt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_killed_run_never_leaves_a_manifest(tmp_path):
    """SIGKILL mid-run: no --out folder; the staging folder beside it has no manifest."""
    src = write_jsonl(tmp_path / "big.jsonl", make_docs(60000, seed=3))
    work = tmp_path / "work"
    work.mkdir()
    argv = [sys.executable, "-m", "timoe_cli", "prepare-data", "--source", str(src),
            "--out", str(work / "data"), "--workers", "1"]  # fmt: skip
    kill_when(argv, lambda: bool(list(work.glob(".data.partial-*/train/*.bin"))), 60)
    assert not (work / "data").exists()
    assert list(work.rglob("manifest.json")) == []


def test_config_file_and_flags(tmp_path, corpus, capsys):
    src, _ = corpus
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(f"source: {src}\nval-fraction: 0.3\nseq_len: 32\nstart_year: 2014\n")
    out = tmp_path / "data"
    code, _, err = run_cli(capsys, "prepare-data", "--config", cfg, "--out", out, "--seq-len", "48")
    assert code == 0, err
    m = load_manifest(out)
    assert (m.val_fraction, m.seq_len, m.slicing.start_year) == (0.3, 48, 2014)
    saved = PrepareDataConfig.model_validate(
        __import__("yaml").safe_load((out / "config.yaml").read_text())
    )
    assert saved.seq_len == 48 and saved.source == str(src)


def test_hf_source_end_to_end_without_network(tmp_path, monkeypatch):
    from datasets import Dataset

    from timoe_core.data import sources

    rows = [{"text": d["text"], "dump": f"CC-MAIN-{d['date'][:4]}-10"} for d in make_docs(48)]
    monkeypatch.setattr(
        sources, "load_hf_dataset", lambda n, c, s: Dataset.from_list(rows).to_iterable_dataset()
    )
    m = prep("fineweb-edu", tmp_path / "data")
    assert m.source == "fineweb-edu"
    assert m.years_with_tokens("train") == list(range(2013, 2025))


# ------------------------------------------------------------------ bad input


def _case_missing_file(tmp):
    return ["--source", tmp / "nope.jsonl"], "does not exist"


def _case_malformed_line(tmp):
    src = write_jsonl(tmp / "bad.jsonl", make_docs(5), {2: '{"text": "cut off'})
    return ["--source", src], "bad.jsonl:3: malformed JSON"


def _case_missing_text_field(tmp):
    src = write_jsonl(tmp / "a.jsonl", [{"body": "x", "date": 2015}])
    return ["--source", src], "no text field 'text' (the fields are: 'body', 'date')"


def _case_missing_date_field(tmp):
    src = write_jsonl(tmp / "a.jsonl", [{"text": "x", "published_at": 2015}])
    return ["--source", src], "no date field 'date' (the fields are: 'text', 'published_at')"


def _case_bad_date(tmp):
    src = write_jsonl(tmp / "a.jsonl", make_docs(3) + [{"text": "x", "date": "next tuesday"}])
    return ["--source", src], "a.jsonl:4: cannot read a year from 'date' = 'next tuesday'"


def _case_empty_after_filtering(tmp):
    src = write_jsonl(tmp / "a.jsonl", [{"text": "x", "date": 1990}, {"text": "y", "date": 1995}])
    return ["--source", src], "no documents left to write"


def _case_start_after_end(tmp):
    return ["--source", "builtin", "--start-year", "2020", "--end-year", "2015"], "swap them"


def _case_slice_years_zero(tmp):
    return ["--source", "builtin", "--slice-years", "0"], "--slice-years"


def _case_val_fraction_zero(tmp):
    return ["--source", "builtin", "--val-fraction", "0"], "--val-fraction"


def _case_val_fraction_high(tmp):
    return ["--source", "builtin", "--val-fraction", "0.6"], "--val-fraction"


def _case_shard_index(tmp):
    return ["--source", "builtin", "--num-shards", "2", "--shard-index", "2"], "shard_index 2"


def _case_unsupported_file(tmp):
    (tmp / "a.txt").write_text("text")
    return ["--source", tmp / "a.txt"], "give a .jsonl"


def _case_stray_argument(tmp):
    return ["somefile.jsonl", "--source", "builtin"], "--merge"


BAD_INPUT = [
    _case_missing_file,
    _case_malformed_line,
    _case_missing_text_field,
    _case_missing_date_field,
    _case_bad_date,
    _case_empty_after_filtering,
    _case_start_after_end,
    _case_slice_years_zero,
    _case_val_fraction_zero,
    _case_val_fraction_high,
    _case_shard_index,
    _case_unsupported_file,
    _case_stray_argument,
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=lambda f: f.__name__.removeprefix("_case_"))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    inputs = tmp_path / "in"
    inputs.mkdir()
    args, expected = case(inputs)
    work = tmp_path / "work"
    work.mkdir()
    code, out, err = run_cli(capsys, "prepare-data", *args, "--out", work / "data")
    assert code == 2, (out, err)
    assert expected in err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert list(work.iterdir()) == []  # no output dir, no staging folder


def test_out_dir_not_empty_without_overwrite(tmp_path, capsys, corpus):
    src, _ = corpus
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "prepare-data", "--source", src, "--out", out)
    assert code == 2 and "exists and is not empty: pass --overwrite" in err
    assert err.strip().count("\n") == 0
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (
        out / "keep.txt"
    ).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_skip_bad_rows_counts_instead_of_stopping(tmp_path, capsys):
    src = write_jsonl(
        tmp_path / "a.jsonl",
        make_docs(20) + [{"text": "x", "date": "never"}, {"body": "y"}],
        {5: "{not json"},
    )
    code, out, err = run_cli(
        capsys, "prepare-data", "--source", src, "--out", tmp_path / "d", "--skip-bad-rows"
    )
    assert code == 0, err
    assert "bad rows 3" in out
    assert load_manifest(tmp_path / "d").skipped["bad_rows"] == 3


def test_all_rows_bad_says_why_the_corpus_is_empty(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", [{"body": "x", "date": 2015}] * 3)
    code, _, err = run_cli(
        capsys, "prepare-data", "--source", src, "--out", tmp_path / "d", "--skip-bad-rows"
    )
    assert code == 2 and "3 bad rows (first:" in err and "no text field 'text'" in err


# ------------------------------------------------------------------ built-in


def test_builtin_source_writes_twelve_years(tmp_path, capsys):
    out = tmp_path / "d"
    code, stdout, err = run_cli(
        capsys, "prepare-data", "--source", "builtin", "--out", out, "--builtin-docs-per-year", "20"
    )
    assert code == 0, err
    m = load_manifest(out, verify="sha256")
    assert m.years_with_tokens("train") == list(range(2013, 2025))
    assert m.source.startswith("builtin")
    # deterministic: the same seed gives the same bytes
    m2 = prep("builtin", tmp_path / "d2", builtin_docs_per_year=20)
    assert m2.files == m.files



def test_until_drops_later_documents_and_keeps_earlier_years_byte_identical(tmp_path):
    from helpers import invoke_cli

    common = {"seq_len": 16, "val_fraction": 0.2, "builtin_docs_per_year": 6, "workers": 1}
    full = prepare_data(PrepareDataConfig(out=tmp_path / "full", **common))
    cut = prepare_data(PrepareDataConfig(out=tmp_path / "cut", until="2015-06", **common))
    # The built-in documents are dated to the day: 2015's up to June 30 are kept, and
    # they are the first documents of the full build's 2015 files (date order).
    assert cut.until == "2015-06-30"
    assert cut.years_with_tokens("train") == [2013, 2014, 2015]
    kept = 0
    for split in ("train", "val"):
        if not (tmp_path / "full" / split / "2015.idx").exists():
            continue  # no held-out 2015 document in so small a corpus
        full_index = np.fromfile(tmp_path / "full" / split / "2015.idx", dtype=INDEX_DTYPE)
        cut_index = np.fromfile(tmp_path / "cut" / split / "2015.idx", dtype=INDEX_DTYPE)
        upto = full_index["time_us"] < np.datetime64("2015-07-01", "us").astype(np.int64)
        assert 0 < upto.sum() < len(full_index) or split == "val"
        assert (cut_index == full_index[: int(upto.sum())]).all()
        n = int(cut_index["tokens"].sum()) * 2
        a = (tmp_path / "full" / split / "2015.bin").read_bytes()
        assert (tmp_path / "cut" / split / "2015.bin").read_bytes() == a[:n]
        kept += len(cut_index)
    assert cut.skipped["after_until"] == sum(
        full.years[str(y)].train.documents + full.years[str(y)].val.documents
        for y in range(2015, 2025)) - kept
    assert cut.slicing == full.slicing
    for split in ("train", "val"):
        for year in (2013, 2014):
            name = f"{split}/{year}.bin"
            assert (tmp_path / "full" / name).exists() == (tmp_path / "cut" / name).exists()
            if (tmp_path / "full" / name).exists():  # (a split may get none of 6 documents)
                a = (tmp_path / "full" / name).read_bytes()
                assert a == (tmp_path / "cut" / name).read_bytes()
    assert (tmp_path / "cut" / "train" / "2013.bin").exists()
    # A document dated by its year alone counts as of Y-12-31: left out by a cut in June.
    src = write_jsonl(tmp_path / "y.jsonl", [{"text": "by year", "date": 2015},
                                             {"text": "by day", "date": "2015-06-30"}])
    by_year = prep(src, tmp_path / "by_year", until="2015-06-30", val_fraction=0.01)
    assert by_year.skipped["after_until"] == 1 and by_year.years["2015"].train.documents == 1
    res = invoke_cli("prepare-data", "--out", tmp_path / "bad", "--until", "2015-13")
    assert res.exit_code == 2 and "bad query date" in res.stderr
    assert not (tmp_path / "bad").exists()


def test_window_dates_are_the_date_of_each_windows_last_token(tmp_path):
    """A window's date is the date of the document holding its last token, read from
    the .idx: windows dated <= d are the first ones, and are the same whatever is after d."""
    rng = random.Random(3)
    rows = []
    for i, day in enumerate(["2016-03-02", "2016-01-20", "2016-07-15", "2016-07-16",
                             "2016-11-30", "2017-02-01", "2016-05-05"] * 3):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
        rows.append({"text": f"Doc {i}. {body}.", "date": f"{day}T08:00:00Z"})
    src = write_jsonl(tmp_path / "a.jsonl", rows)
    out = tmp_path / "data"
    prep(src, out, seq_len=16, val_fraction=0.01)
    w = TokenWindows(out, "train", [2016, 2017], seq_len=16)
    dates = w.window_dates
    assert dates.dtype == np.dtype("datetime64[D]") and len(dates) == len(w)
    # expected from the decoded documents: the day of the document holding token (j+1)*16
    index = np.fromfile(out / "train" / "2016.idx", dtype=INDEX_DTYPE)
    ends = np.cumsum(index["tokens"])
    n2016 = int((w.window_years == 2016).sum())
    for j in range(n2016):
        doc = int(np.searchsorted(ends, (j + 1) * 16, side="right"))
        day = np.datetime64(int(index["time_us"][doc]), "us").astype("datetime64[D]")
        assert dates[j] == day
    assert (np.diff(dates.astype(np.int64)) >= 0).all()  # date order: a prefix per cutoff
    assert str(dates[0]) >= "2016-01-20" and str(dates[n2016 - 1]) == "2016-11-30"
    assert {str(d) for d in dates[n2016:]} == {"2017-02-01"}
    assert w.windows_up_to(date(2016, 7, 15)) == int((dates <= np.datetime64("2016-07-15")).sum())
    assert 0 < w.windows_up_to(date(2016, 7, 15)) < w.windows_up_to(date(2016, 7, 16)) < n2016
    assert w.windows_up_to(date(2015, 12, 31)) == 0 and w.windows_up_to(date(2017, 3, 1)) == len(w)
    # the same data cut at 2016-07-15 has the same first windows and window dates
    cut = prep(src, tmp_path / "cut", seq_len=16, val_fraction=0.01, until="2016-07-15")
    assert cut.until
    wc = TokenWindows(tmp_path / "cut", "train", [2016, 2017], seq_len=16)
    k = w.windows_up_to(date(2016, 7, 15))
    assert wc.windows_up_to(date(2016, 7, 15)) == k
    assert (wc.window_dates[:k] == dates[:k]).all()
    assert all((wc[i] == w[i]).all() for i in range(k))
