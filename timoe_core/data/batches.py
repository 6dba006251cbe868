"""A source's documents, a batch at a time (`DocBatch`), and how rows join a batch:
which shard owns a row, and what a bad row does (`--skip-bad-rows`).

Sharding: shard k of n takes the documents whose text hash (`shard_of`) is k modulo n,
so which shard a document lands in depends on its text alone, never on its position in
the source or on the records around it. Rows that cannot be read (bad rows, empty
texts) are counted by shard 0 only, so the shards' counts add up to the unsharded run's.
Each shard reads and parses the whole stream and tokenises only its own documents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from timoe_core.data.dates import DateError, describe_date_error, parse_date, utc_date
from timoe_core.errors import TimoeError


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


class Shard:
    """Which documents and unreadable rows this shard of `--num-shards` takes."""

    def __init__(self, opts: SourceOptions) -> None:
        self.n = opts.num_shards
        self.k = opts.shard_index

    def owns(self, text: Any) -> bool:
        return self.n == 1 or shard_of(text, self.n) == self.k

    def owns_unreadable(self) -> bool:
        """A row that cannot be read is reported (or counted) by shard 0 alone."""
        return self.k == 0


class BatchBuilder:
    """Collects rows; a bad row stops the run or is counted, as --skip-bad-rows says."""

    def __init__(self, opts: SourceOptions) -> None:
        self.opts = opts
        self.batch = DocBatch()

    def bad(self, message: str, shard: Shard | None = None) -> None:
        if shard is not None and not shard.owns_unreadable():
            return
        if not self.opts.skip_bad_rows:
            raise TimoeError(message + " (pass --skip-bad-rows to count and skip such rows)")
        b = self.batch
        b.bad_rows += 1
        if b.first_bad_row is None:
            b.first_bad_row = message

    def add(self, text: Any, date_value: Any, where_fn: Callable[[], str], shard: Shard,
            date_field: str | None = None) -> None:
        """One row: kept when this shard owns its text; a bad date is this shard's to
        report only then (shard 0 reports rows without text). A text that is not a
        string is a bad row, reported by the shard that owns unreadable rows."""
        if text is not None and not isinstance(text, str):
            self.bad(f"{where_fn()}: field {self.opts.text_field!r} is a "
                     f"{type(text).__name__}, not a string", shard)
            return
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


def missing_field_message(where: str, which: str, name: str, keys: Any) -> str:
    flag = "--text-field" if which == "text" else "--date-field"
    return f"{where}: no {which} field {name!r} ({_fields_hint(keys)}): choose one with {flag}"
