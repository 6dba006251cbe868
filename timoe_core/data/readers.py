"""Readers of local files and `datasets` streams, each yielding `DocBatch`es: our own
JSONL reader (a bad line is named as `file:line`) and the `datasets` library for .json,
.csv and .parquet files and hub datasets."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from timoe_core.data.batches import (
    BatchBuilder,
    DocBatch,
    Shard,
    SourceOptions,
    missing_field_message,
)
from timoe_core.errors import TimoeError, first_line

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")
# Raw JSONL bytes read per batch: large enough for cheap batching, small enough that
# two batches in flight stay a few tens of MB whatever the corpus size.
JSONL_BLOCK_BYTES = 4 << 20
DATASETS_BATCH_ROWS = 1024

_MISSING = object()


def file_suffix(path: Path) -> str:
    name = path.name.lower()
    for s in SUPPORTED_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def jsonl_batches(path: Path, opts: SourceOptions, shard: Shard) -> Iterator[DocBatch]:
    """Our JSONL reader: big binary reads, one json.loads per line."""
    text_field, date_field = opts.text_field, opts.date_field
    fallback = opts.date_fallback_field
    builder = BatchBuilder(opts)
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
                raise TimoeError(f"cannot read {path}: {first_line(exc)}") from None
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
                    builder.bad(f"{path}:{line_no}: malformed JSON ({first_line(exc)})", shard)
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
                        builder.bad(missing_field_message(f"{path}:{line_no}", which, name,
                                                           row))
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


def datasets_file_batches(
    path: Path, opts: SourceOptions, shard: Shard
) -> Iterator[DocBatch]:
    builder_name = {".json": "json", ".csv": "csv", ".parquet": "parquet"}[file_suffix(path)]
    try:
        import datasets

        quiet_datasets()
        ds = datasets.load_dataset(
            builder_name, data_files=str(path), split="train", streaming=True
        )
    except Exception as exc:  # datasets wraps reader errors in many types
        raise TimoeError(f"cannot read {path} ({type(exc).__name__}: {first_line(exc)})") from None
    size = path.stat().st_size
    yield from iterable_dataset_batches(ds, opts, shard, str(path))
    # a file's bytes count once it is done: datasets does not say how far it is
    yield DocBatch(bytes_read=size)


def iterable_dataset_batches(
    ds: Any, opts: SourceOptions, shard: Shard, label: str
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
    builder = BatchBuilder(opts)
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
            line = re.search(r"\bline (\d+)", first_line(exc))
            where = f"{label}:{line.group(1)}" if line else f"{label} after row {row_no}"
            raise TimoeError(
                f"cannot read {where} ({type(exc).__name__}: {first_line(exc)})"
            ) from None
        if columns is None:
            date_field = _date_column(list(cols), date_field, opts.date_fallback_field)
            _check_columns(label, list(cols), text_field, date_field)
            columns = list(cols)
        texts, dates = cols[text_field], cols[date_field]
        for text, date_value in zip(texts, dates):
            row_no += 1
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
            raise TimoeError(missing_field_message(label, which, name, columns))
