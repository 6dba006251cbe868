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

Dates are read by `dates.parse_date`; sharding (by text hash) and bad rows are
`batches.py`'s; the file readers are `readers.py`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from timoe_core.data.batches import DocBatch, Shard, SourceOptions
from timoe_core.data.dates import parse_date
from timoe_core.data.readers import (
    SUPPORTED_SUFFIXES,
    datasets_file_batches,
    file_suffix,
    iterable_dataset_batches,
    jsonl_batches,
    quiet_datasets,
)
from timoe_core.errors import TimoeError, first_line

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
FINEWEB_DATE_FIELD = "dump"
# Offline (or behind a firewall): fetch a part of the corpus once, then read the folder.
FINEWEB_OFFLINE_HINT = (
    "; offline, download a part of it where there is network, e.g. `hf download "
    f"{FINEWEB_EDU} --repo-type dataset --include 'sample/10BT/000_*.parquet' "
    "--local-dir fineweb-edu`, and pass the folder instead: --source fineweb-edu/sample/10BT"
)
BUILTIN_BATCH_DOCS = 1024


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

        shard = Shard(self.opts)
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
        shard = Shard(self.opts)
        done_bytes = 0
        for path in self.files:
            if file_suffix(path) in (".jsonl", ".jsonl.gz"):
                reader = jsonl_batches(path, self.opts, shard)
            else:
                reader = datasets_file_batches(path, self.opts, shard)
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
                f"cannot open {self.description!r} ({type(exc).__name__}: {first_line(exc)})"
                f"{hint}"
            ) from None
        yield from iterable_dataset_batches(
            ds, self.opts, Shard(self.opts), self.description
        )


def load_hf_dataset(name: str, config: str | None, split: str) -> Any:
    """`datasets.load_dataset(..., streaming=True)`; tests replace this function."""
    import datasets

    quiet_datasets()
    return datasets.load_dataset(name, config, split=split, streaming=True)



# ---------------------------------------------------------------------- opening


def _find_files(root: Path) -> list[Path]:
    if root.is_file():
        if file_suffix(root) not in SUPPORTED_SUFFIXES:
            raise TimoeError(
                f"{root} is a {root.suffix or 'suffix-less'} file: give a .jsonl, .json, "
                ".csv or .parquet file (or a folder of them)"
            )
        return [root]
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and file_suffix(p) in SUPPORTED_SUFFIXES
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
