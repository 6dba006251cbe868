"""Tokenising a source's documents: while one batch is tokenised by `workers` threads
(tiktoken's Rust BPE runs without the GIL and returns numpy buffers, no Python int per
token), the main thread parses the next one; each year's tokens are spilled in source
order with their records (ordering.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from timoe_core.config import PrepareDataConfig
from timoe_core.data.batches import text_hash
from timoe_core.data.dates import utc_date
from timoe_core.data.ordering import SPILL_DTYPE, Spill
from timoe_core.data.progress import SKIP_REASONS, PrepareProgress, ProgressCallback
from timoe_core.data.sources import DocumentSource
from timoe_core.data.split import val_threshold
from timoe_core.data.token_files import TOKEN_DTYPE
from timoe_core.timeslices import TimeSlicing
from timoe_core.tokenizer import Tokenizer

# Jobs per worker thread and batch: enough to even out documents of unequal length.
JOBS_PER_WORKER = 4

# One year's share of an encode job: the year, its documents' tokens joined by EOT, each
# document's token count, and each document's position in its batch.
EncodedYear = tuple[int, np.ndarray, np.ndarray, list[int]]


def make_encoder(tokenizer: Tokenizer) -> Callable[[str], np.ndarray]:
    encode = tokenizer.encode_to_numpy

    def encode_text(text: str) -> np.ndarray:
        try:
            return encode(text)
        except UnicodeEncodeError:  # lone surrogates: as tiktoken's encode_ordinary does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return encode(text)

    return encode_text


def encode_job(
    encode: Callable[[str], np.ndarray], texts: list[str], years: list[int], first: int,
    eot: np.ndarray,
) -> list[EncodedYear]:
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
class Counts:
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    first_bad_row: str | None = None
    years_seen_out_of_range: tuple[int, int] | None = None

    def out_of_range(self, year: int) -> None:
        self.skipped["out_of_range"] += 1
        lo_hi = self.years_seen_out_of_range
        self.years_seen_out_of_range = (
            (year, year) if lo_hi is None else (min(lo_hi[0], year), max(lo_hi[1], year))
        )


def tokenise_into(
    cfg: PrepareDataConfig,
    source: DocumentSource,
    tokenizer: Tokenizer,
    slicing: TimeSlicing,
    spill: Spill,
    pool: ThreadPoolExecutor,
    progress_callback: ProgressCallback | None,
    until: date | None = None,
) -> Counts:
    encode = make_encoder(tokenizer)
    eot = np.array([tokenizer.eot_token], dtype=np.uint32)
    threshold = val_threshold(cfg.val_fraction)
    start, end = slicing.start_year, slicing.end_year
    n_jobs = max(1, cfg.workers * JOBS_PER_WORKER)
    counts = Counts()
    skipped = counts.skipped
    if until is not None:
        skipped["after_until"] = 0
    t0 = time.perf_counter()
    # An encode job and its documents' dates, text hashes and val flags (whole batch).
    in_flight: list[tuple[Future[list[EncodedYear]], np.ndarray, np.ndarray, np.ndarray]] = []

    def drain() -> None:
        for fut, times, hashes, held_out in in_flight:
            for year, tokens, lengths, positions in fut.result():
                at = np.asarray(positions, dtype=np.int64)
                records = np.empty(len(at), dtype=SPILL_DTYPE)
                records["time_us"], records["hash"] = times[at], hashes[at]
                records["tokens"], records["val"] = lengths, held_out[at]
                spill.write(year, tokens, records)
        in_flight.clear()

    def report_progress(bytes_read: int | None) -> None:
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
                # By the document's day; a date by year only is its last day (dates.py).
                skipped["after_until"] += 1
                continue
            texts.append(text)
            years.append(year)
            times.append(when)
            hashes.append(text_hash(text))
        # Tokenise this batch in the pool while the previous one is written and the
        # next one is read.
        new_jobs: list[tuple[Future[list[EncodedYear]], np.ndarray, np.ndarray, np.ndarray]] = []
        if texts:
            hash_array = np.asarray(hashes, dtype=np.uint64)
            meta = (np.asarray(times, dtype=np.int64), hash_array,
                    hash_array < np.uint64(threshold))  # is_val, for the whole batch
            step = -(-len(texts) // n_jobs)
            for i in range(0, len(texts), step):
                job = pool.submit(encode_job, encode, texts[i : i + step], years[i : i + step],
                                  i, eot)
                new_jobs.append((job, *meta))
        drain()
        in_flight.extend(new_jobs)
        report_progress(batch.bytes_read)
    drain()
    report_progress(source.total_bytes)
    return counts
