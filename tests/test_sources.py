"""Document sources of `prepare-data`: dates, the JSONL reader, datasets and hub sources."""

from __future__ import annotations

import csv
import gzip
import json
from datetime import date, datetime, timezone

import pytest
from helpers import write_jsonl

from timoe_core.data import readers, sources
from timoe_core.data.batches import SourceOptions, shard_of
from timoe_core.data.dates import DateError, parse_date, parse_year, utc_date
from timoe_core.data.sources import open_source
from timoe_core.errors import TimoeError


def read_all(source: str, **opts) -> tuple[list, list, int]:
    src = open_source(source, SourceOptions(**opts))
    texts, years, bad = [], [], 0
    for b in src.batches():
        texts += b.texts
        years += b.years
        bad += b.bad_rows
    return texts, years, bad


# ------------------------------------------------------------------------ dates


@pytest.mark.parametrize(
    "value, year",
    [
        (2019, 2019),
        ("2019", 2019),
        (" 2019 ", 2019),
        (2019.0, 2019),
        ("2019-04-01", 2019),
        ("2019-04", 2019),
        ("2019/04/01", 2019),
        ("2019-04-01T10:00:00Z", 2019),
        ("2019-04-01T10:00:00.123456Z", 2019),
        ("2019-04-01 10:00:00", 2019),
        ("2019-04-01T10:00:00+02:00", 2019),
        ("2019-12-31T23:30:00-05:00", 2020),  # the UTC year: 2020-01-01 04:30 UTC
        ("2020-01-01T00:30:00+01:00", 2019),  # 2019-12-31 23:30 UTC
        ("20190401T100000Z", 2019),  # basic ISO 8601, via fromisoformat
        (1554112800, 2019),  # unix seconds
        ("1554112800", 2019),
        (1554112800.25, 2019),
        (1554112800000, 2019),  # unix milliseconds
        (datetime(2019, 4, 1, 10, tzinfo=timezone.utc), 2019),
        (date(2019, 4, 1), 2019),
        ("CC-MAIN-2017-13", 2017),  # Common Crawl dump names (FineWeb)
        ("Mon, 01 Apr 2019 10:00:00 GMT", 2019),  # RFC 2822
    ],
)
def test_parse_year_reads_every_documented_form(value, year):
    assert parse_year(value) == year


@pytest.mark.parametrize(
    "value, day",
    [
        ("CC-MAIN-2017-13", date(2017, 4, 2)),  # ISO week 13 of 2017: Mon 03-27 .. Sun 04-02
        ("CC-MAIN-2013-20", date(2013, 5, 19)),
        ("CC-MAIN-2020-53", date(2021, 1, 3)),  # the week's Sunday may be in the next year
        ("CC-MAIN-2019-01", date(2019, 1, 6)),
        (2016, date(2016, 12, 31)),  # a year alone counts as of its last day
        ("2016", date(2016, 12, 31)),
        ("2016-07", date(2016, 7, 31)),
        ("2016-07-15", date(2016, 7, 15)),
    ],
)
def test_dates_of_periods_are_their_last_day(value, day):
    assert utc_date(parse_date(value)) == day


@pytest.mark.parametrize("value", ["CC-MAIN-2019-53", "CC-MAIN-2019-00", "CC-MAIN-2019-60"])
def test_a_dump_of_no_iso_week_is_refused(value):
    with pytest.raises(DateError, match="ISO week"):
        parse_date(value)


@pytest.mark.parametrize(
    "value",
    ["yesterday", "", "   ", None, True, "2019-13-01", "2019-02-30", [2019], float("nan"), "12/04"],
)
def test_parse_year_rejects_what_names_no_year(value):
    with pytest.raises(DateError):
        parse_year(value)


# ------------------------------------------------------------------------ JSONL


def test_jsonl_reader_skips_blank_lines_bom_and_crlf(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(
        b'\xef\xbb\xbf{"text": "one", "date": 2014}\r\n\r\n   \n'
        b'{"text": "two", "date": "2015-01-02"}\n{"text": "three", "date": 2016}'  # no final \n
    )
    texts, years, bad = read_all(str(p))
    assert texts == ["one", "two", "three"]
    assert years == [2014, 2015, 2016]
    assert bad == 0


def test_jsonl_reader_is_exact_across_block_boundaries(tmp_path, monkeypatch):
    rows = [
        {"text": ("x" * (i % 97)) + f" doc {i} ünïcødé", "date": 2013 + i % 12} for i in range(500)
    ]
    p = write_jsonl(tmp_path / "a.jsonl", rows)
    monkeypatch.setattr(readers, "JSONL_BLOCK_BYTES", 61)  # lines longer than a block too
    texts, years, _ = read_all(str(p))
    assert texts == [r["text"] for r in rows]
    assert years == [r["date"] for r in rows]


def test_jsonl_gz_is_read(tmp_path):
    p = tmp_path / "a.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped", "date": 2020}) + "\n")
    assert read_all(str(p))[:2] == (["zipped"], [2020])


def test_malformed_line_names_file_and_line(tmp_path):
    p = write_jsonl(
        tmp_path / "bad.jsonl", [{"text": "a", "date": 2014}] * 3, {2: '{"text": "b", '}
    )
    with pytest.raises(TimoeError, match=r"bad\.jsonl:3: malformed JSON"):
        read_all(str(p))
    texts, _, bad = read_all(str(p), skip_bad_rows=True)
    assert (len(texts), bad) == (3, 1)


def test_missing_fields_name_the_fields_that_exist(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [{"body": "a", "published": 2014}])
    with pytest.raises(
        TimoeError, match=r"a\.jsonl:1: no text field 'text'.*'body', 'published'.*--text-field"
    ):
        read_all(str(p))
    with pytest.raises(
        TimoeError, match=r"no date field 'date'.*'body', 'published'.*--date-field"
    ):
        read_all(str(p), text_field="body")
    assert read_all(str(p), text_field="body", date_field="published")[:2] == (["a"], [2014])


def test_bad_date_names_line_and_value(tmp_path):
    p = write_jsonl(
        tmp_path / "a.jsonl", [{"text": "a", "date": 2014}, {"text": "b", "date": "soon"}]
    )
    with pytest.raises(TimoeError, match=r"a\.jsonl:2: cannot read a year from 'date' = 'soon'"):
        read_all(str(p))


def test_non_object_and_non_string_text_are_bad_rows(tmp_path):
    p = write_jsonl(
        tmp_path / "a.jsonl", [[1, 2], {"text": 5, "date": 2014}, {"text": "ok", "date": 2014}]
    )
    with pytest.raises(TimoeError, match=r"a\.jsonl:1: expected a JSON object, got list"):
        read_all(str(p))
    texts, _, bad = read_all(str(p), skip_bad_rows=True)
    assert (texts, bad) == (["ok"], 2)


def test_a_text_that_is_not_a_string_is_named_where_it_is_in_every_reader(tmp_path):
    """One check for every reader (BatchBuilder.add): the place, the field, the type."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = write_jsonl(tmp_path / "a.jsonl", [{"text": 5, "date": 2014}])
    with pytest.raises(TimoeError, match=r"a\.jsonl:1: field 'text' is a int, not a string"):
        read_all(str(p))
    pq.write_table(pa.table({"text": [7], "date": [2014]}), tmp_path / "b.parquet")
    with pytest.raises(TimoeError, match=r"b\.parquet row 1: field 'text' is a int, not a "
                                         r"string"):
        read_all(str(tmp_path / "b.parquet"))
    assert read_all(str(tmp_path / "b.parquet"), skip_bad_rows=True) == ([], [], 1)


def test_null_text_is_passed_on_as_empty(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [{"text": None, "date": 2014}])
    assert read_all(str(p))[0] == [None]


def test_folder_shards_split_by_text_not_by_position(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"text": f"a{i}", "date": 2014} for i in range(5)])
    write_jsonl(d / "b.jsonl", [{"text": f"b{i}", "date": 2015} for i in range(5)])
    (d / ".hidden.jsonl").write_text("not json\n")  # hidden files are ignored
    (d / "notes.txt").write_text("ignored\n")
    everything = read_all(str(d))[0]
    assert everything == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
    shards = [read_all(str(d), num_shards=3, shard_index=k)[0] for k in range(3)]
    assert sorted(t for s in shards for t in s) == sorted(everything)  # a partition
    assert all(shard_of(t, 3) == k for k, s in enumerate(shards) for t in s)
    # Another record order, and records added around them, move no document to another
    # shard: which shard holds a document is a function of its text alone.
    write_jsonl(d / "a.jsonl", [{"text": f"new{i}", "date": 2016} for i in range(7)]
                + [{"text": f"a{i}", "date": 2014} for i in reversed(range(5))])
    again = [read_all(str(d), num_shards=3, shard_index=k)[0] for k in range(3)]
    assert [sorted(t for t in s if not t.startswith("new")) for s in again] == [
        sorted(s) for s in shards]


def test_bad_line_in_second_file_is_named_there(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"text": "a", "date": 2014}] * 4)
    write_jsonl(d / "b.jsonl", [{"text": "b", "date": 2014}], {1: "oops"})
    with pytest.raises(TimoeError, match=r"b\.jsonl:2: malformed JSON"):
        read_all(str(d))


def test_open_source_refuses_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(TimoeError, match="does not exist"):
        open_source(str(tmp_path / "nope.jsonl"), SourceOptions())
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(TimoeError, match=r"\.txt file: give a \.jsonl"):
        open_source(str(tmp_path / "a.txt"), SourceOptions())
    (tmp_path / "empty").mkdir()
    with pytest.raises(TimoeError, match="holds no .jsonl"):
        open_source(str(tmp_path / "empty"), SourceOptions())
    with pytest.raises(TimoeError, match="names no dataset"):
        open_source("hf:", SourceOptions())


# ------------------------------------------------------- files through datasets


ROWS = [
    {"text": "first document", "date": "2019-04-01T10:00:00Z"},
    {"text": "second document", "date": "2014-02-03"},
    {"text": "third document", "date": "2021"},
]


def test_csv_json_and_parquet_files_read_like_jsonl(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "date"])
        w.writeheader()
        w.writerows(ROWS)
    (tmp_path / "a.json").write_text(json.dumps(ROWS), encoding="utf-8")  # a JSON array
    table = pa.table(
        {
            "text": [r["text"] for r in ROWS],
            "date": pa.array(
                [datetime(2019, 4, 1), datetime(2014, 2, 3), datetime(2021, 1, 1)],
                pa.timestamp("s"),
            ),
        }
    )
    pq.write_table(table, tmp_path / "a.parquet")
    expected = ([r["text"] for r in ROWS], [2019, 2014, 2021], 0)
    for name in ("a.csv", "a.json", "a.parquet"):
        assert read_all(str(tmp_path / name)) == expected, name


def test_datasets_file_names_missing_fields(tmp_path):
    with open(tmp_path / "a.csv", "w", encoding="utf-8") as f:
        f.write("body,when\nhello,2019\n")
    with pytest.raises(TimoeError, match=r"no text field 'text'.*'body', 'when'"):
        read_all(str(tmp_path / "a.csv"))
    with pytest.raises(TimoeError, match=r"b\.csv row 1: cannot read a year from 'when' = 'x'"):
        (tmp_path / "b.csv").write_text("body,when\nhello,x\n", encoding="utf-8")
        read_all(str(tmp_path / "b.csv"), text_field="body", date_field="when")


# ------------------------------------------------------------ hub (no network)


def fake_hub(monkeypatch, rows):
    """Replace the hub loader by an in-memory streaming dataset; record the calls."""
    from datasets import Dataset

    calls = []

    def load(name, config, split):
        calls.append((name, config, split))
        return Dataset.from_list(rows).to_iterable_dataset()

    monkeypatch.setattr(sources, "load_hf_dataset", load)
    return calls


def test_hf_source_streams_through_the_loader(monkeypatch):
    calls = fake_hub(monkeypatch, [dict(r, id=i) for i, r in enumerate(ROWS)])
    assert read_all("hf:someone/news:en", hf_split="validation") == (
        [r["text"] for r in ROWS],
        [2019, 2014, 2021],
        0,
    )
    assert calls == [("someone/news", "en", "validation")]
    with pytest.raises(TimoeError, match=r"no date field 'published'.*'text', 'date', 'id'"):
        read_all("hf:someone/news", date_field="published")


def test_fineweb_edu_takes_the_year_from_dump(monkeypatch):
    rows = [
        {"text": "a", "id": "1", "dump": "CC-MAIN-2017-13", "date": "2017-03-30T01:02:03Z"},
        {"text": "b", "id": "2", "dump": "CC-MAIN-2021-49", "date": "2021-12-01T00:00:00Z"},
    ]
    calls = fake_hub(monkeypatch, rows)
    src = open_source("fineweb-edu", SourceOptions(), date_field_given=False)
    batches = list(src.batches())
    assert [t for b in batches for t in b.texts] == ["a", "b"]
    assert [y for b in batches for y in b.years] == [2017, 2021]
    assert calls == [("HuggingFaceFW/fineweb-edu", None, "train")]
    open_source("fineweb-edu:sample-10BT", SourceOptions(), date_field_given=False)
    assert src.description == "fineweb-edu"


def test_hub_errors_become_one_clean_message(monkeypatch):
    def load(name, config, split):
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")

    monkeypatch.setattr(sources, "load_hf_dataset", load)
    with pytest.raises(TimoeError, match=r"cannot open 'hf:nobody/nothing' \(FileNotFoundError"):
        read_all("hf:nobody/nothing")


# ------------------------------------------- FineWeb-Edu's own schema, anywhere


FINEWEB_ROWS = [
    {"text": "a", "id": "1", "dump": "CC-MAIN-2017-13", "url": "u"},
    {"text": "b", "id": "2", "dump": "CC-MAIN-2021-49", "url": "v"},
]


def _read_default_date_field(source: str) -> tuple[list, list]:
    src = open_source(source, SourceOptions(), date_field_given=False)
    batches = list(src.batches())
    return [t for b in batches for t in b.texts], [y for b in batches for y in b.years]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_local_fineweb_copy_without_date_reads_the_year_from_dump(tmp_path: Path, suffix: str):
    path = tmp_path / f"000_00000{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, FINEWEB_ROWS)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(FINEWEB_ROWS), path)
    assert _read_default_date_field(str(tmp_path)) == (["a", "b"], [2017, 2021])
    # A given --date-field is used as given: no silent fallback.
    with pytest.raises(TimoeError, match="no date field 'date'"):
        read_all(str(path))


def test_date_column_wins_over_dump_when_both_exist(tmp_path: Path):
    rows = [{"text": "a", "dump": "CC-MAIN-2017-13", "date": "2019-01-01"}]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    assert _read_default_date_field(str(path)) == (["a"], [2019])


def test_bad_dump_value_names_the_dump_field(tmp_path: Path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "dump": "CC-MAIN-latest"}])
    with pytest.raises(TimoeError, match=r"a\.jsonl:1.*'dump'"):
        _read_default_date_field(str(path))


def test_fineweb_edu_offline_names_the_download_command(monkeypatch):
    def load(name, config, split):
        raise ConnectionError("Couldn't reach 'HuggingFaceFW/fineweb-edu' on the Hub (offline)")

    monkeypatch.setattr(sources, "load_hf_dataset", load)
    with pytest.raises(TimoeError) as err:
        _read_default_date_field("fineweb-edu")
    msg = str(err.value)
    assert "hf download HuggingFaceFW/fineweb-edu --repo-type dataset" in msg
    assert "pass the folder instead" in msg and "\n" not in msg
