"""Dated document sources for `prepare-data`: where documents come from and their year.

A source turns `--source` into a stream of `DocBatch`es: the texts and years of a
few thousand documents at a time, never the whole corpus. Sources:

- `builtin`: the embedded corpus (`timoe_core.data.builtin`).
- a `.jsonl` (or `.jsonl.gz`) file: read line by line by our own reader, so a bad line
  is named as `file:line`.
- a `.json`, `.csv` or `.parquet` file: streamed through the `datasets` library.
- a folder: every such file under it, in sorted path order.
- `hf:NAME[:CONFIG]`: `datasets.load_dataset(NAME, CONFIG, streaming=True)`.
- `fineweb-edu[:CONFIG]`: HuggingFaceFW/fineweb-edu, dated by its `dump` field (the
  crawl's ISO week: `CC-MAIN-2017-13` -> 2017-04-02, that week's Sunday) unless
  `--date-field` says otherwise.

FineWeb(-Edu) as it is: when `--date-field` is not given and a record has no `date`
but has `dump`, the date comes from `dump`, for every source (a local copy of
FineWeb-Edu's parquet files reads without flags).

Sharding: shard k of n takes the documents whose text hash (`shard_of`) is k modulo n,
so which shard a document lands in depends on its text alone, never on its position in
the source or on the records around it. Rows that cannot be read (bad rows, empty
texts) are counted by shard 0 only, so the shards' counts add up to the unsharded run's.
Each shard reads and parses the whole stream and tokenises only its own documents.

Dates (`parse_date`): a year (`2019`, `"2019"`), an ISO date or timestamp
(`2019-04-01`, `2019-04`, `2019/04/01`, `2019-04-01T10:00:00Z`, with or without an
offset), a unix timestamp in seconds (or milliseconds when above 1e11), an RFC 2822
date, a Common Crawl dump name (`CC-MAIN-2017-13`: the last day, Sunday, of ISO week 13
of 2017, the latest day the crawl can hold), or a `datetime`/`date` object.
One rule for time zones: a timestamp's date is its UTC date (an offset is converted to
UTC; a timestamp without one is taken as UTC). A value that names a period rather than
an instant (a year, a month, a day) stands for the last moment of that period, as
`--until` has always read a year (text dated 2015 may be from 2015-12-31).
"""

from __future__ import annotations

import calendar
import email.utils
import functools
import gzip
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from timoe_core.errors import TimoeError

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
FINEWEB_DATE_FIELD = "dump"
# Offline (or behind a firewall): fetch a part of the corpus once, then read the folder.
FINEWEB_OFFLINE_HINT = (
    "; offline, download a part of it where there is network, e.g. `hf download "
    f"{FINEWEB_EDU} --repo-type dataset --include 'sample/10BT/000_*.parquet' "
    "--local-dir fineweb-edu`, and pass the folder instead: --source fineweb-edu/sample/10BT"
)
SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")
# Raw JSONL bytes read per batch: large enough for cheap batching, small enough that
# two batches in flight stay a few tens of MB whatever the corpus size.
JSONL_BLOCK_BYTES = 4 << 20
DATASETS_BATCH_ROWS = 1024
BUILTIN_BATCH_DOCS = 1024

_MISSING = object()


# ----------------------------------------------------------------------- dates


class DateError(ValueError):
    """A date value that names no year."""


_CC_DUMP_RE = re.compile(r"CC-MAIN-(\d{4})-(\d{2})")
_YEAR_RE = re.compile(r"[+]?\d{4}")
_NUMBER_RE = re.compile(r"[+-]?\d+(?:\.\d*)?")
_ISO_RE = re.compile(  # a date alone (a time of day is _ISO_FULL_RE's)
    r"(\d{4})(?:[-/](\d{1,2})(?:[-/](\d{1,2}))?)?"  # date
    r"(?:\s*(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?))?"  # offset (a date's date is itself)
)


# A bare number is a year (1-9999), a compact ISO date (20190401) or a Unix timestamp
# in seconds or milliseconds from this value on (1973-03-03): below it a number is
# ambiguous (12345 s is 1970, surely not what was meant) and is refused, never read as
# 1970.
_MIN_TIMESTAMP = 1e8


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)


def _utc_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of a datetime; naive means UTC (the one rule)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _ONE_US


def _end_of_period(year: int, month: int | None = None, day: int | None = None) -> int:
    """The last microsecond (UTC) of a year, a month or a day; ValueError for no such day."""
    month_ = 12 if month is None else month
    day_ = calendar.monthrange(year, month_)[1] if day is None else day
    return _utc_us(datetime(year, month_, day_)) + 86_400_000_000 - 1


def _time_from_timestamp(ts: float) -> int:
    if not math.isfinite(ts):
        raise DateError("not a finite number")
    if abs(ts) > 1e11:  # milliseconds: 1e11 s would be the year 5138
        ts /= 1000.0
    try:
        return _utc_us(datetime.fromtimestamp(ts, tz=timezone.utc))
    except (OverflowError, OSError, ValueError):
        raise DateError("timestamp out of range") from None


def _time_from_number(value: int | float) -> int:
    """A time from a bare number: see _MIN_TIMESTAMP for the rule."""
    if isinstance(value, float) and not math.isfinite(value):
        raise DateError("not a finite number")
    if abs(value) >= 1 << 53:  # float() of a huge JSON integer overflows
        raise DateError("timestamp out of range")
    if value < 0:
        raise DateError("a negative number is neither a year nor a timestamp after 1973")
    if value < 10000:
        return _year_end(int(value))  # a year; 2016.5 (a fractional year) is in 2016
    if float(value).is_integer() and 10000101 <= value <= 99991231:  # compact ISO YYYYMMDD
        digits = str(int(value))
        try:
            return _end_of_period(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        except ValueError:
            raise DateError(f"{digits} is not a YYYYMMDD date (no such day)") from None
    if value < _MIN_TIMESTAMP:
        raise DateError(
            f"{value!r} is neither a year, a YYYYMMDD date nor a Unix timestamp after 1973"
        )
    return _time_from_timestamp(float(value))


def _year_end(year: int) -> int:
    if not 1 <= year <= 9999:
        raise DateError("year out of range")
    return _end_of_period(year)


_ISO_FULL_RE = re.compile(
    r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?"
)


def _time_from_iso(m: re.Match[str]) -> int:
    """An ISO date and time with an optional offset, converted to UTC."""
    year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
    second = int(m.group(6) or 0)
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    offset = m.group(8)
    tz = timezone.utc
    if offset and offset not in ("Z", "UTC", "GMT"):
        digits = offset[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + int(digits[2:4] or 0)
        tz = timezone(timedelta(minutes=minutes if offset[0] == "+" else -minutes))
    try:
        return _utc_us(datetime(year, month, day, hour, minute, second, micro, tzinfo=tz))
    except (ValueError, OverflowError):
        raise DateError("no such day or time") from None


@functools.lru_cache(maxsize=1 << 16)
def _time_from_string(text: str) -> int:
    s = text.strip()
    if not s:
        raise DateError("empty")
    if m := _CC_DUMP_RE.fullmatch(s):  # a crawl of ISO week W: as of that week's Sunday
        try:
            sunday = date.fromisocalendar(int(m.group(1)), int(m.group(2)), 7)
        except ValueError:
            raise DateError(f"{s} names no ISO week (weeks are 01-52, or 53)") from None
        return _end_of_period(sunday.year, sunday.month, sunday.day)
    if _YEAR_RE.fullmatch(s):
        return _year_end(int(s))
    if _NUMBER_RE.fullmatch(s):
        number = float(s) if "." in s else int(s)
        return _time_from_number(number)
    if m := _ISO_FULL_RE.fullmatch(s):
        return _time_from_iso(m)
    if m := _ISO_RE.fullmatch(s):  # a date without a time: the period it names
        month, day = m.group(2), m.group(3)
        try:
            return _end_of_period(int(m.group(1)), int(month) if month else None,
                                  int(day) if day else None)
        except (ValueError, OverflowError):
            raise DateError("no such day") from None
    try:  # whatever else ISO 8601 allows (20190401T10:00:00 included)
        return _utc_us(datetime.fromisoformat(s))
    except (ValueError, OverflowError):
        pass
    try:  # RFC 2822: "Mon, 01 Apr 2019 10:00:00 GMT"
        return _utc_us(email.utils.parsedate_to_datetime(s))
    except (TypeError, ValueError, IndexError, OverflowError):
        pass
    raise DateError("unrecognised format")


def parse_date(value: Any) -> int:
    """When a date value says a document was written: microseconds since the Unix epoch,
    UTC (a period stands for its last microsecond); DateError when it names no date."""
    if isinstance(value, bool) or value is None:
        raise DateError("no date")
    if isinstance(value, (int, float)):
        us = _time_from_number(value)
    elif isinstance(value, datetime):
        try:
            us = _utc_us(value)
        except OverflowError:
            raise DateError("out of range") from None
    elif isinstance(value, date):
        us = _end_of_period(value.year, value.month, value.day)
    elif isinstance(value, str):
        us = _time_from_string(value)
    else:
        raise DateError(f"a {type(value).__name__}, not a date")
    if not _MIN_US <= us <= _MAX_US:
        raise DateError("year out of range")
    return us


_MIN_US = _utc_us(datetime(1, 1, 1))
_MAX_US = _end_of_period(9999)


def utc_date(us: int) -> date:
    """The UTC date of a time from `parse_date`."""
    return (_EPOCH + timedelta(microseconds=us)).date()


def parse_year(value: Any) -> int:
    """The year a date value names (its UTC year); DateError when it names none."""
    return utc_date(parse_date(value)).year


def describe_date_error(where: str, value: Any, field_name: str, why: str = "") -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    why = f" ({why})" if why else ""
    return (
        f"{where}: cannot read a year from {field_name!r} = {shown}{why}: use a year (2019), "
        "an ISO date or timestamp (2019-04-01, 20190401, 2019-04-01T10:00:00Z) or a unix "
        "timestamp"
    )


# ---------------------------------------------------------------------- batches


@dataclass
class DocBatch:
    """Documents of one batch, in source order, with what the source could not read."""

    texts: list[Any] = field(default_factory=list)  # usually str; None or "" are "empty"
    years: list[int] = field(default_factory=list)  # the UTC year of each date
    times: list[int] = field(default_factory=list)  # parse_date: microseconds, UTC
    bad_rows: int = 0
    first_bad_row: str | None = None  # the message of the first bad row skipped
    bytes_read: int | None = None  # cumulative, where the source knows it


@dataclass
class SourceOptions:
    text_field: str = "text"
    date_field: str = "date"
    skip_bad_rows: bool = False
    num_shards: int = 1
    shard_index: int = 0
    hf_split: str = "train"
    # Read when a record lacks `date_field` (FineWeb's `dump`); None: no fallback.
    date_fallback_field: str | None = None


def text_hash(text: str) -> int:
    """A stable 64-bit hash of a document's text (blake2b of its UTF-8 bytes)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_of(text: Any, num_shards: int) -> int:
    """The shard a document belongs to: a function of its text alone (never of where it
    sits in the source). A row without readable text belongs to shard 0, which counts it."""
    if num_shards == 1 or not isinstance(text, str) or not text or text.isspace():
        return 0
    return text_hash(text) % num_shards


class _Shard:
    """Which documents and unreadable rows this shard of `--num-shards` takes."""

    def __init__(self, opts: SourceOptions) -> None:
        self.n = opts.num_shards
        self.k = opts.shard_index

    def owns(self, text: Any) -> bool:
        return self.n == 1 or shard_of(text, self.n) == self.k

    def owns_unreadable(self) -> bool:
        """A row that cannot be read is reported (or counted) by shard 0 alone."""
        return self.k == 0


class _BatchBuilder:
    """Collects rows; a bad row stops the run or is counted, as --skip-bad-rows says."""

    def __init__(self, opts: SourceOptions) -> None:
        self.opts = opts
        self.batch = DocBatch()

    def bad(self, message: str, shard: _Shard | None = None) -> None:
        if shard is not None and not shard.owns_unreadable():
            return
        if not self.opts.skip_bad_rows:
            raise TimoeError(message + " (pass --skip-bad-rows to count and skip such rows)")
        b = self.batch
        b.bad_rows += 1
        if b.first_bad_row is None:
            b.first_bad_row = message

    def add(self, text: Any, date_value: Any, where_fn: Callable[[], str], shard: _Shard,
            date_field: str | None = None) -> None:
        """One row: kept when this shard owns its text; a bad date is this shard's to
        report only then (shard 0 reports rows without text)."""
        if not shard.owns(text):
            return
        try:
            when = parse_date(date_value)
        except DateError as exc:
            field_name = date_field or self.opts.date_field
            self.bad(describe_date_error(where_fn(), date_value, field_name, str(exc)))
            return
        self.batch.texts.append(text)
        self.batch.years.append(utc_date(when).year)
        self.batch.times.append(when)

    def take(self) -> DocBatch:
        out, self.batch = self.batch, DocBatch()
        return out


def _fields_hint(keys: Any) -> str:
    names = ", ".join(repr(str(k)) for k in keys) if keys else "none"
    return f"the fields are: {names}"


def _missing_field_message(where: str, which: str, name: str, keys: Any) -> str:
    flag = "--text-field" if which == "text" else "--date-field"
    return f"{where}: no {which} field {name!r} ({_fields_hint(keys)}): choose one with {flag}"


# ------------------------------------------------------------------------ sources


class DocumentSource:
    """A stream of DocBatches; `description` goes into the manifest."""

    description: str = ""
    total_bytes: int | None = None

    def batches(self) -> Iterator[DocBatch]:  # pragma: no cover - interface
        raise NotImplementedError


class BuiltinSource(DocumentSource):
    def __init__(self, opts: SourceOptions, docs_per_year: int, seed: int) -> None:
        self.opts = opts
        self.docs_per_year = docs_per_year
        self.seed = seed
        self.description = f"builtin (docs_per_year={docs_per_year}, seed={seed})"

    def batches(self) -> Iterator[DocBatch]:
        from timoe_core.data.builtin import builtin_documents

        shard = _Shard(self.opts)
        batch = DocBatch()
        for doc in builtin_documents(docs_per_year=self.docs_per_year, seed=self.seed):
            if not shard.owns(doc.text):
                continue
            batch.texts.append(doc.text)
            batch.years.append(int(doc.year))
            batch.times.append(parse_date(doc.date))  # its day: the day's last moment
            if len(batch.texts) >= BUILTIN_BATCH_DOCS:
                yield batch
                batch = DocBatch()
        if batch.texts:
            yield batch


class FilesSource(DocumentSource):
    """Local files: .jsonl by our reader, .json/.csv/.parquet through `datasets`."""

    def __init__(self, opts: SourceOptions, root: Path, files: list[Path]) -> None:
        self.opts = opts
        self.files = files
        self.description = str(root.resolve())
        self.total_bytes = sum(f.stat().st_size for f in files)

    def batches(self) -> Iterator[DocBatch]:
        shard = _Shard(self.opts)
        done_bytes = 0
        for path in self.files:
            if _suffix(path) in (".jsonl", ".jsonl.gz"):
                reader = _jsonl_batches(path, self.opts, shard)
            else:
                reader = _datasets_file_batches(path, self.opts, shard)
            for batch in reader:
                if batch.bytes_read is not None:
                    batch.bytes_read += done_bytes
                yield batch
            done_bytes += path.stat().st_size


class HubSource(DocumentSource):
    def __init__(self, opts: SourceOptions, name: str, config: str | None, label: str) -> None:
        self.opts = opts
        self.name = name
        self.config = config
        self.description = label

    def batches(self) -> Iterator[DocBatch]:
        try:
            ds = load_hf_dataset(self.name, self.config, self.opts.hf_split)
        except TimoeError:
            raise
        except Exception as exc:  # datasets raises many types for a bad name/config/network
            hint = FINEWEB_OFFLINE_HINT if self.name == FINEWEB_EDU else ""
            raise TimoeError(
                f"cannot open {self.description!r} ({type(exc).__name__}: {_first_line(exc)})"
                f"{hint}"
            ) from None
        yield from _iterable_dataset_batches(
            ds, self.opts, _Shard(self.opts), self.description
        )


def load_hf_dataset(name: str, config: str | None, split: str) -> Any:
    """`datasets.load_dataset(..., streaming=True)`; tests replace this function."""
    import datasets

    quiet_datasets()
    return datasets.load_dataset(name, config, split=split, streaming=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in SUPPORTED_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _jsonl_batches(path: Path, opts: SourceOptions, shard: _Shard) -> Iterator[DocBatch]:
    """Our JSONL reader: big binary reads, one json.loads per line."""
    text_field, date_field = opts.text_field, opts.date_field
    fallback = opts.date_fallback_field
    builder = _BatchBuilder(opts)
    loads = json.loads
    line_no = 0
    pending = b""
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise TimoeError(f"cannot read {path}: {exc.strerror or exc}") from None
    f = gzip.GzipFile(fileobj=raw) if path.name.lower().endswith(".gz") else raw
    with raw, f:
        first = True
        while True:
            try:
                block = f.read(JSONL_BLOCK_BYTES)
            except (OSError, EOFError) as exc:  # e.g. a truncated .gz
                raise TimoeError(f"cannot read {path}: {_first_line(exc)}") from None
            if first:
                block = block.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
                first = False
            if block:
                cut = block.rfind(b"\n")
                if cut < 0:  # a line longer than a block: keep reading
                    pending += block
                    continue
                data, pending = pending + block[: cut + 1], block[cut + 1 :]
            else:
                data, pending = pending, b""
                if not data:
                    break
            lines = data.split(b"\n")
            if data.endswith(b"\n"):
                lines.pop()
            for line in lines:
                line_no += 1
                if not line or line.isspace():
                    continue
                try:
                    row = loads(line)
                except (ValueError, UnicodeDecodeError) as exc:
                    builder.bad(f"{path}:{line_no}: malformed JSON ({_first_line(exc)})", shard)
                    continue
                if not isinstance(row, dict):
                    builder.bad(
                        f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}",
                        shard,
                    )
                    continue
                text = row.get(text_field, _MISSING)
                date_value, row_date_field = row.get(date_field, _MISSING), date_field
                if date_value is _MISSING and fallback is not None and fallback in row:
                    date_value, row_date_field = row[fallback], fallback
                if text is _MISSING or date_value is _MISSING:
                    which, name = ("text", text_field) if text is _MISSING else ("date", date_field)
                    if shard.owns(None if text is _MISSING else text):
                        builder.bad(_missing_field_message(f"{path}:{line_no}", which, name,
                                                           row))
                    continue
                if text is not None and not isinstance(text, str):
                    builder.bad(
                        f"{path}:{line_no}: field {text_field!r} is a "
                        f"{type(text).__name__}, not a string", shard,
                    )
                    continue
                builder.add(text, date_value, lambda: f"{path}:{line_no}",  # noqa: B023
                            shard, row_date_field)
            batch = builder.take()
            batch.bytes_read = raw.tell()  # compressed bytes for .gz: the progress total
            yield batch
            if not block:
                break


def quiet_datasets() -> None:
    """`datasets` logs reader errors and progress bars on stderr itself; we report each
    problem in our own one line."""
    import datasets

    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)
    datasets.disable_progress_bars()


def _datasets_file_batches(
    path: Path, opts: SourceOptions, shard: _Shard
) -> Iterator[DocBatch]:
    builder_name = {".json": "json", ".csv": "csv", ".parquet": "parquet"}[_suffix(path)]
    try:
        import datasets

        quiet_datasets()
        ds = datasets.load_dataset(
            builder_name, data_files=str(path), split="train", streaming=True
        )
    except Exception as exc:  # datasets wraps reader errors in many types
        raise TimoeError(f"cannot read {path} ({type(exc).__name__}: {_first_line(exc)})") from None
    size = path.stat().st_size
    yield from _iterable_dataset_batches(ds, opts, shard, str(path))
    # a file's bytes count once it is done: datasets does not say how far it is
    yield DocBatch(bytes_read=size)


def _iterable_dataset_batches(
    ds: Any, opts: SourceOptions, shard: _Shard, label: str
) -> Iterator[DocBatch]:
    """Rows of a `datasets.IterableDataset`, a column batch at a time."""
    text_field, date_field = opts.text_field, opts.date_field
    columns = getattr(ds, "column_names", None)
    if columns is not None:
        date_field = _date_column(columns, date_field, opts.date_fallback_field)
        _check_columns(label, columns, text_field, date_field)
        ds = ds.select_columns(
            [text_field, date_field] if text_field != date_field else [text_field]
        )
    builder = _BatchBuilder(opts)
    row_no = 0
    iterator = iter(ds.iter(batch_size=DATASETS_BATCH_ROWS))
    while True:
        try:
            cols = next(iterator)
        except StopIteration:
            break
        except Exception as exc:  # reader errors (bad CSV, corrupt parquet, network)
            # the reader's own line number (pandas: "in line 32") beats our row count,
            # which only advances a whole batch at a time
            line = re.search(r"\bline (\d+)", _first_line(exc))
            where = f"{label}:{line.group(1)}" if line else f"{label} after row {row_no}"
            raise TimoeError(
                f"cannot read {where} ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        if columns is None:
            date_field = _date_column(list(cols), date_field, opts.date_fallback_field)
            _check_columns(label, list(cols), text_field, date_field)
            columns = list(cols)
        texts, dates = cols[text_field], cols[date_field]
        for text, date_value in zip(texts, dates):
            row_no += 1
            if text is not None and not isinstance(text, str):
                builder.bad(
                    f"{label} row {row_no}: field {text_field!r} is a "
                    f"{type(text).__name__}, not a string", shard,
                )
                continue
            builder.add(text, date_value, lambda: f"{label} row {row_no}",  # noqa: B023
                        shard, date_field)
        yield builder.take()


def _date_column(columns: list[str], date_field: str, fallback: str | None) -> str:
    """The date column of a table: `date_field`, or the fallback when only it exists."""
    if date_field not in columns and fallback is not None and fallback in columns:
        return fallback
    return date_field


def _check_columns(label: str, columns: list[str], text_field: str, date_field: str) -> None:
    for which, name in (("text", text_field), ("date", date_field)):
        if name not in columns:
            raise TimoeError(_missing_field_message(label, which, name, columns))


# ---------------------------------------------------------------------- opening


def _find_files(root: Path) -> list[Path]:
    if root.is_file():
        if _suffix(root) not in SUPPORTED_SUFFIXES:
            raise TimoeError(
                f"{root} is a {root.suffix or 'suffix-less'} file: give a .jsonl, .json, "
                ".csv or .parquet file (or a folder of them)"
            )
        return [root]
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and _suffix(p) in SUPPORTED_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise TimoeError(f"folder {root} holds no .jsonl, .json, .csv or .parquet files")
    return files


def open_source(
    source: str,
    opts: SourceOptions,
    *,
    builtin_docs_per_year: int = 400,
    seed: int = 0,
    date_field_given: bool = True,
) -> DocumentSource:
    """Resolve `--source` to a DocumentSource; TimoeError when it cannot be one.

    `date_field_given=False` (the user left --date-field at its default) lets
    fineweb-edu use its `dump` field, and any other source fall back to `dump` where a
    record has no `date`.
    """
    source = source.strip()
    if not date_field_given and opts.date_fallback_field is None:
        opts.date_fallback_field = FINEWEB_DATE_FIELD
    if source == "builtin":
        return BuiltinSource(opts, builtin_docs_per_year, seed)
    if source == "fineweb-edu" or source.startswith("fineweb-edu:"):
        config = source.partition(":")[2] or None
        if not date_field_given:
            opts.date_field = FINEWEB_DATE_FIELD
        return HubSource(opts, FINEWEB_EDU, config, source)
    if source.startswith("hf:"):
        name, _, config = source[3:].partition(":")
        if not name:
            raise TimoeError(f"--source {source!r} names no dataset: use hf:NAME[:CONFIG]")
        return HubSource(opts, name, config or None, source)
    path = Path(source).expanduser()
    if not path.exists():
        raise TimoeError(
            f"source {source} does not exist: give builtin, fineweb-edu, hf:NAME[:CONFIG], "
            "or a .jsonl/.json/.csv/.parquet file or folder"
        )
    return FilesSource(opts, path, _find_files(path))
