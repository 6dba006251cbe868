"""`prepare-data`: tokenise a dated corpus into per-(split, year) uint16 token files.

`prepare_data(cfg)` streams documents from a source (sources.py), drops the ones
that are empty or outside the slicing years (counted in the manifest's `skipped`),
puts each document in `val` when a hash of its text falls below `val_fraction`
(blake2b, so the split is the same on every run and machine), tokenises with GPT-2
BPE, and writes the tokens, each document followed by EOT, to `train/YEAR.bin` or
`val/YEAR.bin`, with one record per document in `train/YEAR.idx` / `val/YEAR.idx`.

The record order is not data. Within a year's file the documents are ordered by (date,
text hash), never by where they sat in the source, so what is written for the dates up
to d is a function of the documents dated up to d and the config alone: whatever the
record order, the sharding (by text hash, sources.py), the workers, or the records
after d. `--max-docs N` keeps each year's first N documents in that order (so its
documents up to d are too). Tokenised documents are spilled to a staging file per year
in source order and written out in order once the source is read (`_write_year`);
`--merge` merges the shards' ordered files the same way, so a merged run is byte for
byte the unsharded one.

Speed and memory: the source is read a batch (a few MB of text) at a time; while one
batch is tokenised by `workers` threads (tiktoken's Rust BPE runs without the GIL and
returns numpy buffers, no Python int per token), the main thread parses the next one.
Tokens go to disk through buffered writers, hashed (sha256) on the way, so memory stays
at a couple of batches whatever the corpus size.

Atomic output: everything is written into a hidden staging folder beside `--out`
(`.NAME.partial-XXXX`), `manifest.json` last, and the folder is renamed into place
only when complete. With `--overwrite` the old folder is replaced only after the new
one is complete. A killed run leaves at most a staging folder, never a manifest that
describes incomplete files; a rerun starts over and removes the staging folders of
killed runs for the same `--out` (on this host: each records its writer's pid).

`merge_data_dirs` merges the outputs of `--num-shards/--shard-index` runs (or any data
dirs with the same tokenizer, slicing, seq_len, val_fraction and --max-docs) into one,
in (date, text hash) order.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from timoe_core.config import CONFIG_FILENAME, PrepareDataConfig, save_config
from timoe_core.data.batches import SourceOptions, text_hash
from timoe_core.data.dates import utc_date
from timoe_core.data.manifest import (
    INDEX_DTYPE,
    MANIFEST_FILENAME,
    SPLITS,
    FileEntry,
    Manifest,
    ShardSpec,
    SlicingSpec,
    SplitStats,
    YearStats,
    index_file_relpath,
    load_manifest,
    token_file_relpath,
)
from timoe_core.data.sources import open_source
from timoe_core.errors import TimoeError
from timoe_core.io import (
    atomic_write_json,
    check_output_path,
    check_writable_dir,
    chmod_default,
    sha256_file,
)
from timoe_core.lock import output_lock
from timoe_core.timeslices import TimeSlicing, parse_query_date
from timoe_core.tokenizer import Tokenizer, get_tokenizer

SKIP_REASONS: tuple[str, ...] = ("out_of_range", "empty", "bad_rows")
TOKEN_DTYPE = np.dtype("<u2")
# The staging record of a tokenised document: the index record and its split.
_SPILL_DTYPE = np.dtype([("time_us", "<i8"), ("hash", "<u8"), ("tokens", "<i8"), ("val", "u1")])
SPILL_DIRNAME = ".spill"
# Tokens gathered into memory at once when a year is written in order.
GATHER_TOKENS = 1 << 22
WRITE_BUFFER_BYTES = 1 << 20
COPY_CHUNK_BYTES = 8 << 20
# Jobs per worker thread and batch: enough to even out documents of unequal length.
JOBS_PER_WORKER = 4


@dataclass
class PrepareProgress:
    """What a progress display needs; sent after every batch."""

    documents: int  # documents written
    tokens: int  # tokens written (EOTs included)
    elapsed_s: float
    skipped: dict[str, int]
    bytes_read: int | None = None
    total_bytes: int | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


ProgressCallback = Callable[[PrepareProgress], None]


# ------------------------------------------------------------------------ split


def val_threshold(val_fraction: float) -> int:
    return int(val_fraction * 2**64)


def is_val(text: str, val_fraction: float) -> bool:
    """Whether a document is held out: the same answer on every run and machine."""
    return text_hash(text) < val_threshold(val_fraction)


# ---------------------------------------------------------------------- writing


class _TokenFile:
    """One train/YEAR.bin or val/YEAR.bin: buffered appends, sha256 on the way."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = open(path, "wb", buffering=WRITE_BUFFER_BYTES)  # noqa: SIM115
        self._sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self._f.write(view)
        self._sha.update(view)
        self.bytes += view.nbytes

    def close(self) -> FileEntry:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return FileEntry(bytes=self.bytes, sha256=self._sha.hexdigest())

    def abort(self) -> None:
        try:
            self._f.close()  # flushes its buffer: on a full disk that fails again
        except OSError:
            pass  # the staging folder holding it is removed next


class _Outputs:
    """The token files of a staging folder and their per-(split, year) counts."""

    def __init__(self, root: Path, years: Sequence[int]) -> None:
        self.root = root
        self.files: dict[str, _TokenFile] = {}
        self.stats: dict[int, YearStats] = {y: YearStats() for y in years}

    def _file(self, rel: str) -> _TokenFile:
        f = self.files.get(rel)
        if f is None:
            f = self.files[rel] = _TokenFile(self.root / rel)
        return f

    def write_index(self, split: str, year: int, records: np.ndarray) -> None:
        self._file(index_file_relpath(split, year)).write(records.astype(INDEX_DTYPE))

    def write(self, split: str, year: int, data: Any, documents: int) -> None:
        rel = token_file_relpath(split, year)
        f = self._file(rel)
        f.write(data)
        s: SplitStats = getattr(self.stats[year], split)
        s.tokens += len(data) if isinstance(data, np.ndarray) else memoryview(data).nbytes // 2
        s.documents += documents

    @property
    def tokens(self) -> int:
        return sum(s.train.tokens + s.val.tokens for s in self.stats.values())

    @property
    def documents(self) -> int:
        return sum(s.train.documents + s.val.documents for s in self.stats.values())

    def close(self) -> dict[str, FileEntry]:
        return {rel: f.close() for rel, f in sorted(self.files.items())}

    def abort(self) -> None:
        for f in self.files.values():
            f.abort()


# ------------------------------------------------------------------ output dirs


def check_out_dir(out: Path | None, overwrite: bool) -> Path:
    """Refuse an output folder we must not write (before any work is done)."""
    if out is None:
        raise TimoeError("--out is required: the folder to write the prepared data into")
    out = check_output_path(out, "--out")  # a link to a folder: that folder
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise TimoeError(
                f"--out {out} exists and is not empty: pass --overwrite to replace it, "
                "or choose another folder"
            )
        if not (out / MANIFEST_FILENAME).is_file():
            raise TimoeError(
                f"--out {out} is not empty and is not a prepared data dir (no "
                f"{MANIFEST_FILENAME}): refusing to replace it even with --overwrite"
            )
        foreign = _not_written_by_prepare_data(out)
        if foreign:
            raise TimoeError(
                f"--out {out} holds {foreign[0]}, which prepare-data did not write "
                f"({len(foreign)} such entries): refusing to replace the folder even with "
                "--overwrite; move them out or choose another --out"
            )
    # The staging folder goes beside --out: that is where we must be able to write.
    check_writable_dir(out.absolute().parent if out.exists() else out, "--out")
    return out


def _not_written_by_prepare_data(out: Path) -> list[Path]:
    """What --overwrite would delete that is not ours: anything but manifest.json,
    config.yaml and train|val/YEAR.bin (a run dir someone put inside, notes...)."""
    ours_top = {MANIFEST_FILENAME, CONFIG_FILENAME}
    foreign = []
    for p in sorted(out.iterdir()):
        if p.name in ours_top and p.is_file():
            continue
        if p.name in ("train", "val") and p.is_dir() and not p.is_symlink():
            foreign += [q for q in sorted(p.iterdir())
                        if not (q.is_file() and re.fullmatch(r"\d{1,4}\.(bin|idx)", q.name))]
            continue
        foreign.append(p)
    return foreign


class _Staging:
    """A hidden folder beside `out`; renamed onto it only when complete."""

    def __init__(self, out: Path, overwrite: bool) -> None:
        self.out = out
        self.overwrite = overwrite
        self._made_parents: list[Path] = []
        parent = out.absolute().parent
        while not parent.exists():
            self._made_parents.append(parent)
            parent = parent.parent
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(out)
        self.path = Path(
            tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.absolute().parent)
        )
        _chmod_default(self.path, 0o777)  # mkdtemp makes it 0700
        (self.path / _OWNER_FILENAME).write_text(_owner_tag(), encoding="utf-8")

    def commit(self) -> None:
        out = self.out
        check_out_dir(out, self.overwrite)  # again: something may have appeared meanwhile
        (self.path / _OWNER_FILENAME).unlink(missing_ok=True)
        if out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.absolute().parent))
            os.replace(out, old)  # replaces the empty folder mkdtemp made
            os.rename(self.path, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            os.rename(self.path, out)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        for p in self._made_parents:  # innermost first; only while empty
            try:
                p.rmdir()
            except OSError:
                break


def raise_naming_the_path(exc: BaseException, out: Path) -> None:
    """A write error of a file object (a full disk on flush) carries no file name: name
    the output it was writing, so the one-line message says where."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from None


# Who writes a staging folder (host and pid), so a rerun can tell a folder left by a
# killed run (its process is gone) from one another run is still writing.
_OWNER_FILENAME = ".owner"


def _owner_tag() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_abandoned_staging(out: Path) -> None:
    """Remove the staging folders of killed runs for the same --out on this host."""
    host = socket.gethostname()
    for p in out.absolute().parent.glob(f".{out.name}.partial-*"):
        try:
            owner_host, pid = (p / _OWNER_FILENAME).read_text(encoding="utf-8").split()
        except (OSError, ValueError):
            continue  # not ours to judge (another version, or a folder being created)
        if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


_chmod_default = chmod_default  # the permissions a plain mkdir/open would give


def _finish(
    staging: _Staging, outputs: _Outputs, cfg: PrepareDataConfig, manifest: Manifest
) -> Manifest:
    manifest.files = outputs.close()
    _chmod_default(save_config(cfg, staging.path), 0o666)
    manifest_path = staging.path / MANIFEST_FILENAME
    atomic_write_json(manifest_path, manifest.model_dump(mode="json"))  # last
    _chmod_default(manifest_path, 0o666)
    staging.commit()
    return manifest


# ------------------------------------------------------------------ tokenising


def _make_encoder(tokenizer: Tokenizer) -> Callable[[str], np.ndarray]:
    # encode_to_numpy with no disallowed specials encodes like encode_ordinary (special
    # token strings as plain text) but returns a uint32 buffer instead of a list of ints.
    encode = tokenizer._encoding.encode_to_numpy  # type: ignore[attr-defined]

    def encode_text(text: str) -> np.ndarray:
        try:
            return encode(text, disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates: as tiktoken's encode_ordinary does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return encode(text, disallowed_special=())

    return encode_text


def _encode_job(
    encode: Callable[[str], np.ndarray], texts: list[str], years: list[int], first: int,
    eot: np.ndarray,
) -> list[tuple[int, np.ndarray, np.ndarray, list[int]]]:
    """Tokenise documents; per year (in first-seen order): tokens joined by EOT, each
    document's token count, and its position in the batch (`first` + its index here)."""
    groups: dict[int, tuple[list[np.ndarray], list[int]]] = {}
    for i, (text, year) in enumerate(zip(texts, years)):
        group = groups.get(year)
        if group is None:
            group = groups[year] = ([], [])
        tokens = encode(text)
        group[0].append(tokens)
        group[0].append(eot)
        group[1].append(first + i)
    return [
        (year, np.concatenate(parts, dtype=TOKEN_DTYPE, casting="unsafe"),
         np.asarray([len(t) + 1 for t in parts[0::2]], dtype=np.int64), positions)
        for year, (parts, positions) in groups.items()
    ]


@dataclass
class _Counts:
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    first_bad_row: str | None = None
    years_seen_out_of_range: tuple[int, int] | None = None

    def out_of_range(self, year: int) -> None:
        self.skipped["out_of_range"] += 1
        lo_hi = self.years_seen_out_of_range
        self.years_seen_out_of_range = (
            (year, year) if lo_hi is None else (min(lo_hi[0], year), max(lo_hi[1], year))
        )


def _empty_corpus_message(counts: _Counts, slicing: TimeSlicing, source: str) -> str:
    s = counts.skipped
    parts = [f"no documents left to write from {source}"]
    detail = []
    if s["out_of_range"]:
        lo, hi = counts.years_seen_out_of_range or (0, 0)
        seen = str(lo) if lo == hi else f"{lo}-{hi}"
        detail.append(
            f"{s['out_of_range']} outside the years {slicing.start_year}-{slicing.end_year} "
            f"(they are from {seen}: adjust --start-year/--end-year)"
        )
    if s.get("after_until"):
        detail.append(f"{s['after_until']} dated after --until")
    if s["empty"]:
        detail.append(f"{s['empty']} with empty text")
    if s["bad_rows"]:
        detail.append(f"{s['bad_rows']} bad rows (first: {counts.first_bad_row})")
    if detail:
        parts.append("skipped " + "; ".join(detail))
    else:
        parts.append("the source holds no documents for this shard")
    return ": ".join(parts)


def prepare_data(
    cfg: PrepareDataConfig, progress_callback: ProgressCallback | None = None
) -> Manifest:
    """Tokenise `cfg.source` into `cfg.out` (or merge `cfg.merge` into it); the manifest.

    Holds --out's write lock throughout: a second prepare-data on it is exit 2."""
    if cfg.out is None:
        check_out_dir(cfg.out, cfg.overwrite)  # the error saying --out is required
    with output_lock(Path(cfg.out).expanduser()):
        return _prepare_data(cfg, progress_callback)


def _prepare_data(
    cfg: PrepareDataConfig, progress_callback: ProgressCallback | None
) -> Manifest:
    if cfg.merge:
        return merge_data_dirs(cfg, progress_callback)
    until = parse_query_date(cfg.until) if cfg.until is not None else None  # bad date: exit 2
    out = check_out_dir(cfg.out, cfg.overwrite)
    slicing = TimeSlicing(cfg.start_year, cfg.end_year, cfg.slice_years)
    tokenizer = get_tokenizer()
    opts = SourceOptions(
        text_field=cfg.text_field,
        date_field=cfg.date_field,
        skip_bad_rows=cfg.skip_bad_rows,
        num_shards=cfg.num_shards,
        shard_index=cfg.shard_index,
        hf_split=cfg.hf_split,
    )
    source = open_source(
        cfg.source,
        opts,
        builtin_docs_per_year=cfg.builtin_docs_per_year,
        seed=cfg.seed,
        date_field_given="date_field" in cfg.model_fields_set,
    )
    manifest = Manifest(
        tokenizer=tokenizer.name,
        vocab_size=tokenizer.vocab_size,
        eot_token=tokenizer.eot_token,
        slicing=SlicingSpec(**slicing.to_dict()),
        seq_len=cfg.seq_len,
        val_fraction=cfg.val_fraction,
        source=source.description,
        shards=[ShardSpec(num_shards=cfg.num_shards, shard_index=cfg.shard_index)],
        until=until.isoformat() if until is not None else None,
        reading=reading_options(cfg),
        max_docs=cfg.max_docs,
    )

    staging = _Staging(out, cfg.overwrite)
    spill = _Spill(staging.path / SPILL_DIRNAME, slicing.years)
    outputs = _Outputs(staging.path, slicing.years)
    pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="timoe-tokenise")
    try:
        t0 = time.perf_counter()
        counts = _tokenise_into(cfg, source, tokenizer, slicing, spill, pool, progress_callback,
                                until)
        pool.shutdown(wait=True)
        for year in slicing.years:
            _write_year(outputs, year, spill.sources(year), cfg.max_docs, counts.skipped)
        spill.remove()
        if outputs.documents == 0:
            raise TimoeError(_empty_corpus_message(counts, slicing, source.description))
        if progress_callback is not None:  # what was written, after --max-docs
            progress_callback(PrepareProgress(
                documents=outputs.documents, tokens=outputs.tokens,
                elapsed_s=time.perf_counter() - t0, skipped=dict(counts.skipped),
                bytes_read=source.total_bytes, total_bytes=source.total_bytes))
        manifest.years = {str(y): s for y, s in outputs.stats.items()}
        manifest.skipped = counts.skipped
        return _finish(staging, outputs, cfg, manifest)
    except BaseException as exc:
        pool.shutdown(wait=True, cancel_futures=True)
        spill.abort()
        outputs.abort()
        staging.discard()
        raise_naming_the_path(exc, out)
        raise


class _Spill:
    """Tokenised documents of each year in source order, with their staging records,
    until the whole source is read and each year can be written in order."""

    def __init__(self, root: Path, years: Sequence[int]) -> None:
        self.root = root
        self.tokens: dict[int, _TokenFile] = {}
        self.records: dict[int, _TokenFile] = {}
        self.documents = 0
        self.n_tokens = 0

    def write(self, year: int, tokens: np.ndarray, records: np.ndarray) -> None:
        if year not in self.tokens:
            self.tokens[year] = _TokenFile(self.root / f"{year}.bin")
            self.records[year] = _TokenFile(self.root / f"{year}.rec")
        self.tokens[year].write(tokens)
        self.records[year].write(records)
        self.documents += len(records)
        self.n_tokens += len(tokens)

    def sources(self, year: int) -> list[_OrderedSource]:
        if year not in self.tokens:
            return []
        self.tokens.pop(year).close()
        self.records.pop(year).close()
        records = np.fromfile(self.root / f"{year}.rec", dtype=_SPILL_DTYPE)
        return [_OrderedSource(self.root / f"{year}.bin", records)]

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def abort(self) -> None:
        for f in [*self.tokens.values(), *self.records.values()]:
            f.abort()


@dataclass
class _OrderedSource:
    """Documents in one token file: `records` (_SPILL_DTYPE) in the file's order."""

    path: Path
    records: np.ndarray

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.records["tokens"])[:-1]]).astype(np.int64)


def _write_year(
    outputs: _Outputs, year: int, sources: list[_OrderedSource], max_docs: int | None,
    skipped: dict[str, int],
) -> None:
    """Write one year's documents of every source, ordered by (date, text hash), the first
    `max_docs` of them (both splits together), into train/ and val/ with their index.

    Equal keys are equal texts (a 64-bit hash), hence equal tokens: the bytes written do
    not depend on the order the documents came in."""
    if not sources:
        return
    records = np.concatenate([s.records for s in sources])
    which = np.concatenate([np.full(len(s.records), k, dtype=np.int64)
                            for k, s in enumerate(sources)])
    offsets = np.concatenate([s.offsets for s in sources])
    order = np.lexsort((records["hash"], records["time_us"]))
    if max_docs is not None and len(order) > max_docs:
        skipped["over_max_docs"] = skipped.get("over_max_docs", 0) + len(order) - max_docs
        order = order[:max_docs]
    arrays = [np.memmap(s.path, dtype=TOKEN_DTYPE, mode="r") if s.records["tokens"].sum() else
              np.zeros(0, dtype=TOKEN_DTYPE) for s in sources]
    for split in SPLITS:
        chosen = order[records["val"][order] == (split == "val")]
        if not len(chosen):
            continue
        outputs.write_index(split, year, records[chosen][["time_us", "hash", "tokens"]])
        lengths = records["tokens"][chosen]
        start = 0
        while start < len(chosen):  # runs of documents from one source, a chunk at a time
            src = which[chosen[start]]
            end = start + 1
            budget = lengths[start]
            while end < len(chosen) and which[chosen[end]] == src and budget < GATHER_TOKENS:
                budget += lengths[end]
                end += 1
            part = chosen[start:end]
            n = lengths[start:end]
            starts = offsets[part]
            index = np.repeat(starts - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
            outputs.write(split, year, np.ascontiguousarray(arrays[src][index]), len(part))
            start = end
    del arrays


def _tokenise_into(
    cfg: PrepareDataConfig,
    source: Any,
    tokenizer: Tokenizer,
    slicing: TimeSlicing,
    spill: _Spill,
    pool: ThreadPoolExecutor,
    progress_callback: ProgressCallback | None,
    until: date | None = None,
) -> _Counts:
    encode = _make_encoder(tokenizer)
    eot = np.array([tokenizer.eot_token], dtype=np.uint32)
    threshold = val_threshold(cfg.val_fraction)
    start, end = slicing.start_year, slicing.end_year
    n_jobs = max(1, cfg.workers * JOBS_PER_WORKER)
    counts = _Counts()
    skipped = counts.skipped
    if until is not None:
        skipped["after_until"] = 0
    t0 = time.perf_counter()
    in_flight: list[tuple[Future, np.ndarray, np.ndarray, np.ndarray]] = []

    def drain() -> None:
        for fut, times, hashes, held_out in in_flight:
            for year, tokens, lengths, positions in fut.result():
                at = np.asarray(positions, dtype=np.int64)
                records = np.empty(len(at), dtype=_SPILL_DTYPE)
                records["time_us"], records["hash"] = times[at], hashes[at]
                records["tokens"], records["val"] = lengths, held_out[at]
                spill.write(year, tokens, records)
        in_flight.clear()

    def report_progress(bytes_read: int) -> None:
        if progress_callback is not None:
            progress_callback(
                PrepareProgress(
                    documents=spill.documents,
                    tokens=spill.n_tokens,
                    elapsed_s=time.perf_counter() - t0,
                    skipped=dict(skipped),
                    bytes_read=bytes_read,
                    total_bytes=source.total_bytes,
                )
            )

    for batch in source.batches():
        if batch.bad_rows:
            skipped["bad_rows"] += batch.bad_rows
            if counts.first_bad_row is None:
                counts.first_bad_row = batch.first_bad_row
        texts: list[str] = []
        years: list[int] = []
        times: list[int] = []
        hashes: list[int] = []
        for text, year, when in zip(batch.texts, batch.years, batch.times):
            if not text or text.isspace():
                skipped["empty"] += 1
                continue
            if not start <= year <= end:
                counts.out_of_range(year)
                continue
            if until is not None and utc_date(when) > until:
                # By the document's day; a date by year only is its last day (sources.py).
                skipped["after_until"] += 1
                continue
            texts.append(text)
            years.append(year)
            times.append(when)
            hashes.append(text_hash(text))
        # Tokenise this batch in the pool while the previous one is written and the
        # next one is read.
        new_jobs: list[tuple[Future, np.ndarray, np.ndarray, np.ndarray]] = []
        if texts:
            hash_array = np.asarray(hashes, dtype=np.uint64)
            meta = (np.asarray(times, dtype=np.int64), hash_array,
                    hash_array < np.uint64(threshold))  # is_val, for the whole batch
            step = -(-len(texts) // n_jobs)
            for i in range(0, len(texts), step):
                job = pool.submit(_encode_job, encode, texts[i : i + step], years[i : i + step],
                                  i, eot)
                new_jobs.append((job, *meta))
        drain()
        in_flight.extend(new_jobs)
        report_progress(batch.bytes_read)
    drain()
    report_progress(source.total_bytes)
    return counts


# ------------------------------------------------------------------------ merge


# What decides which documents a shard holds and how they were read, besides the shard
# index: recorded in the manifest (Manifest.reading) so a merge can cross-check them.
_READING_FIELDS = ("text_field", "date_field", "max_docs", "hf_split", "skip_bad_rows", "seed",
                   "builtin_docs_per_year")


def reading_options(cfg: PrepareDataConfig) -> dict[str, str | int | bool | None]:
    return {name: getattr(cfg, name) for name in _READING_FIELDS}


def _check_compatible(dirs: list[Path], manifests: list[Manifest]) -> None:
    """Every field that makes shards one corpus must agree: tokenizer, slicing, seq_len,
    val_fraction, --until, the source and how it was read (manifest.reading)."""
    first_dir, first = dirs[0], manifests[0]
    checks = {
        "tokenizer": lambda m: (m.tokenizer, m.vocab_size, m.eot_token, m.dtype),
        "slicing": lambda m: (m.slicing.start_year, m.slicing.end_year, m.slicing.slice_years),
        "seq_len": lambda m: m.seq_len,
        "val_fraction": lambda m: m.val_fraction,
        "--until": lambda m: m.until,
        **{f"--{name.replace('_', '-')}": (lambda m, n=name: (m.reading or {}).get(n))
           for name in _READING_FIELDS},
        "source": lambda m: m.source,  # after the options its description may show
    }
    for d, m in zip(dirs[1:], manifests[1:]):
        for what, get in checks.items():
            if get(m) != get(first):
                raise TimoeError(
                    f"cannot merge {d} into {first_dir}: their {what} differ "
                    f"({get(m)} vs {get(first)}); prepare them with the same options"
                )
    # Shards k1 of n1 and k2 of n2 of one source share documents (record i with
    # i % n1 == k1 and i % n2 == k2) exactly when k1 == k2 modulo gcd(n1, n2).
    seen: list[tuple[str, ShardSpec, Path]] = []
    for d, m in zip(dirs, manifests):
        for shard in m.shards:
            for source, other, other_dir in seen:
                g = math.gcd(shard.num_shards, other.num_shards)
                if source == m.source and shard.shard_index % g == other.shard_index % g:
                    raise TimoeError(
                        f"{other_dir} (shard {other.shard_index} of {other.num_shards}) and {d} "
                        f"(shard {shard.shard_index} of {shard.num_shards}) hold documents of "
                        f"{m.source} in common: merging them would duplicate documents"
                    )
            seen.append((m.source, shard, d))


def merge_data_dirs(
    cfg: PrepareDataConfig, progress_callback: ProgressCallback | None = None
) -> Manifest:
    """Merge the data dirs `cfg.merge` into `cfg.out`, year by year.

    Every (split, year) file of the result holds the inputs' documents in (date, text
    hash) order, as one prepare-data run over all of them writes it (--max-docs applied
    again to the union), so shards merged are the unsharded run byte for byte. Inputs
    are checked against their manifests' sha256 before they are read, and the result's
    checksums are computed from what is written.
    """
    dirs = [Path(d).expanduser() for d in cfg.merge or []]
    if not dirs:
        raise TimoeError("--merge needs at least one data dir to merge")
    resolved = [d.resolve() for d in dirs]
    for i, d in enumerate(resolved):
        if d in resolved[:i]:
            raise TimoeError(f"{dirs[i]} is given twice to --merge")
    out = check_out_dir(cfg.out, cfg.overwrite)
    target = out.resolve()
    for d, real in zip(dirs, resolved):
        if target == real or real in target.parents or target in real.parents:
            raise TimoeError(
                f"--out {out} would overwrite the --merge input {d}: an output is never one "
                "of its inputs (nor inside one); write the merge to a new folder"
            )
    manifests = [load_manifest(d, verify="size") for d in dirs]
    _check_compatible(dirs, manifests)
    first = manifests[0]
    slicing = first.time_slicing()
    sources = list(dict.fromkeys(m.source for m in manifests))
    manifest = Manifest(
        tokenizer=first.tokenizer,
        vocab_size=first.vocab_size,
        eot_token=first.eot_token,
        slicing=first.slicing,
        seq_len=first.seq_len,
        val_fraction=first.val_fraction,
        source=" + ".join(sources),
        shards=[s for m in manifests for s in m.shards],
        until=first.until,
        reading=first.reading,
        max_docs=first.max_docs,
    )
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    for m in manifests:
        for reason, n in m.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    years = sorted({int(y) for m in manifests for y in m.years} | set(slicing.years))

    staging = _Staging(out, cfg.overwrite)
    outputs = _Outputs(staging.path, years)
    total_bytes = sum(e.bytes for m in manifests for e in m.files.values())
    done_bytes = 0
    t0 = time.perf_counter()
    try:
        for year in years:
            inputs: list[_OrderedSource] = []
            for d, m in zip(dirs, manifests):
                for split in SPLITS:
                    source = _merge_input(d, m, split, year)
                    if source is not None:
                        inputs.append(source)
                        done_bytes += source.path.stat().st_size
            _write_year(outputs, year, inputs, first.max_docs, skipped)
            if progress_callback is not None:
                progress_callback(
                    PrepareProgress(
                        documents=outputs.documents,
                        tokens=outputs.tokens,
                        elapsed_s=time.perf_counter() - t0,
                        skipped=dict(skipped),
                        bytes_read=done_bytes,
                        total_bytes=total_bytes,
                    )
                )
        manifest.years = {str(y): s for y, s in outputs.stats.items()}
        manifest.skipped = skipped
        return _finish(staging, outputs, cfg, manifest)
    except BaseException as exc:
        outputs.abort()
        staging.discard()
        raise_naming_the_path(exc, out)
        raise


def _merge_input(d: Path, m: Manifest, split: str, year: int) -> _OrderedSource | None:
    """One input token file and its index, both checked against the manifest's sha256."""
    rel, index_rel = token_file_relpath(split, year), index_file_relpath(split, year)
    entry, index_entry = m.files.get(rel), m.files.get(index_rel)
    if entry is None:
        return None
    if index_entry is None:
        raise TimoeError(
            f"{d} has no {index_rel} (prepared by an older timoe, in source order): "
            "prepare it again to merge it"
        )
    for r, e in ((rel, entry), (index_rel, index_entry)):
        if sha256_file(d / r) != e.sha256:
            raise TimoeError(f"token file {d / r} fails its sha256 check: prepare that "
                             "data dir again")
    index = np.fromfile(d / index_rel, dtype=INDEX_DTYPE)
    if int(index["tokens"].sum()) * TOKEN_DTYPE.itemsize != entry.bytes:
        raise TimoeError(f"{d / index_rel} does not describe {d / rel}: prepare that data "
                         "dir again")
    records = np.empty(len(index), dtype=_SPILL_DTYPE)
    for name in ("time_us", "hash", "tokens"):
        records[name] = index[name]
    records["val"] = split == "val"
    return _OrderedSource(d / rel, records)
