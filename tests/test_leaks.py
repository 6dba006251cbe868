"""One test per leak class an audit found: each shows that a path which let text dated
after d change something as of d no longer does (see docs/architecture.md, "Leak
classes"). tests/test_counterfactual_content.py proves the same end to end."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import write_jsonl

from timoe_core.config import PrepareDataConfig
from timoe_core.data.manifest import load_manifest
from timoe_core.data.prepare import prepare_data

WORDS = "the river council market election school price energy team city report year".split()


def dated_docs(years, per_year: int, seed: int, tag: str = "") -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for year in years:
        for i in range(per_year):
            body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
            month, day = rng.randint(1, 12), rng.randint(1, 28)
            docs.append({"text": f"{tag}Doc {i} of {year}. {body}.",
                         "date": f"{year}-{month:02d}-{day:02d}T{rng.randint(0, 23):02d}:00:00Z"})
    return docs


def two_corpora(tmp_path: Path) -> tuple[Path, Path]:
    """Two JSONL corpora with the same documents up to 2014-12-31; after it, other text
    and more of it, interleaved among the earlier records (not appended)."""
    early = dated_docs([2013, 2014], 30, seed=1)
    late_a = dated_docs([2015, 2016], 20, seed=2)
    late_b = dated_docs([2015, 2016, 2017], 30, seed=3, tag="Other. ")
    rng = random.Random(4)
    a, b = early + late_a, early + late_b
    rng.shuffle(a)
    rng.shuffle(b)
    return (write_jsonl(tmp_path / "a.jsonl", a), write_jsonl(tmp_path / "b.jsonl", b))


def year_bytes(data: Path, years) -> dict[str, str]:
    """sha256 of every token file of `years` (both splits)."""
    out = {}
    for split in ("train", "val"):
        for y in years:
            f = data / split / f"{y}.bin"
            out[f"{split}/{y}"] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else ""
    return out


def prep(source: Path, out: Path, **kw) -> Path:
    kw = {"seq_len": 16, "val_fraction": 0.2, "workers": 1} | kw
    prepare_data(PrepareDataConfig(source=str(source), out=out, **kw))
    return out


def sharded(source: Path, root: Path, n: int = 2, **kw) -> Path:
    shards = [prep(source, root / f"shard{k}", num_shards=n, shard_index=k, **kw)
              for k in range(n)]
    prepare_data(PrepareDataConfig(merge=shards, out=root / "merged"))
    return root / "merged"


# ------------------------------------------------- 1. sharding reorders the past


def test_sharded_and_merged_preparation_of_the_past_ignores_later_records(tmp_path):
    a, b = two_corpora(tmp_path)
    whole_a = prep(a, tmp_path / "whole_a")
    merged_a = sharded(a, tmp_path / "sharded_a")
    merged_b = sharded(b, tmp_path / "sharded_b")
    years = range(2013, 2018)
    # merged shards are the unsharded run, byte for byte
    assert year_bytes(merged_a, years) == year_bytes(whole_a, years)
    # and the past is the same whatever came after it
    assert year_bytes(merged_a, [2013, 2014]) == year_bytes(merged_b, [2013, 2014])
    for k in range(2):
        assert (year_bytes(tmp_path / "sharded_a" / f"shard{k}", [2013, 2014])
                == year_bytes(tmp_path / "sharded_b" / f"shard{k}", [2013, 2014]))
    assert year_bytes(merged_a, [2015]) != year_bytes(merged_b, [2015])  # the control


def test_record_order_and_workers_do_not_change_what_is_written(tmp_path):
    a, _ = two_corpora(tmp_path)
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    reversed_a = write_jsonl(tmp_path / "reversed.jsonl", rows[::-1])
    one = prep(a, tmp_path / "one")
    other = prepare_data(PrepareDataConfig(source=str(reversed_a), out=tmp_path / "two",
                                           seq_len=16, val_fraction=0.2, workers=3))
    assert other.files == load_manifest(one).files  # every token and index file


# ------------------------------------------------- 2. --max-docs counts later records


def test_max_docs_keeps_the_same_past_whatever_comes_later(tmp_path):
    a, b = two_corpora(tmp_path)
    for until in (None, "2014-12-31"):
        tag = until or "all"
        da = prep(a, tmp_path / f"a_{tag}", max_docs=12, until=until)
        db = prep(b, tmp_path / f"b_{tag}", max_docs=12, until=until)
        assert year_bytes(da, [2013, 2014]) == year_bytes(db, [2013, 2014])
        m = load_manifest(da)
        assert [m.years[str(y)].train.documents + m.years[str(y)].val.documents
                for y in (2013, 2014)] == [12, 12]
    # sharded with a cap, then merged: the capped unsharded run
    merged = sharded(a, tmp_path / "capped", max_docs=12)
    assert year_bytes(merged, range(2013, 2017)) == year_bytes(tmp_path / "a_all",
                                                               range(2013, 2017))
    assert load_manifest(merged).skipped == load_manifest(tmp_path / "a_all").skipped


# ------------------------------------------------------------- 5. time zones


def test_a_timestamp_is_dated_by_its_utc_date(tmp_path):
    rows = [
        {"text": "late evening in New York", "date": "2015-12-31T23:00:00-05:00"},  # 2016 UTC
        {"text": "just after midnight in Paris", "date": "2016-01-01T00:30:00+01:00"},  # 2015
        {"text": "and a little later in Berlin", "date": "2016-01-01T00:45:00+0100"},  # 2015
        {"text": "naive timestamps are UTC", "date": "2015-12-31T23:30:00"},
        {"text": "a unix timestamp", "date": 1451602800},  # 2015-12-31T23:00:00Z
    ]
    src = write_jsonl(tmp_path / "tz.jsonl", rows)
    m = load_manifest(prep(src, tmp_path / "all", val_fraction=0.01))
    assert {y: s.train.documents for y, s in m.years.items() if s.train.documents} == {
        "2015": 4, "2016": 1}
    cut = load_manifest(prep(src, tmp_path / "cut", val_fraction=0.01, until="2015-12-31"))
    assert cut.skipped["after_until"] == 1
    assert cut.years["2015"].train.documents == 4
