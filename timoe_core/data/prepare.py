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
record order, the sharding (by text hash, batches.py), the workers, or the records
after d. `--max-docs N` keeps each year's first N documents in that order (so its
documents up to d are too). Tokenised documents are spilled to a staging file per year
in source order and written out in order once the source is read (`write_year`);
`--merge` merges the shards' ordered files the same way, so a merged run is byte for
byte the unsharded one.

Speed and memory: the source is read a batch (a few MB of text) at a time; while one
batch is tokenised by `workers` threads (tiktoken's Rust BPE runs without the GIL and
returns numpy buffers, no Python int per token), the main thread parses the next one.
Tokens go to disk through buffered writers, hashed (sha256) on the way, so memory stays
at a couple of batches whatever the corpus size.

Atomic output: everything is written into a hidden staging folder beside `--out` and
renamed into place only when complete (output_dir.py).

The modules of the job: split.py (val or train), tokenise.py (the threads), ordering.py
(the spill and the ordered write), token_files.py (the files and their checksums),
output_dir.py (--out and the staging folder), merge.py (`--merge`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from timoe_core.config import PrepareDataConfig
from timoe_core.data.batches import SourceOptions
from timoe_core.data.manifest import Manifest, ShardSpec, SlicingSpec
from timoe_core.data.merge import merge_data_dirs, reading_options
from timoe_core.data.ordering import SPILL_DIRNAME, Spill, write_year
from timoe_core.data.output_dir import (
    Staging,
    check_out_dir,
    finish_data_dir,
    raise_naming_the_path,
    required_out,
)
from timoe_core.data.progress import PrepareProgress, ProgressCallback
from timoe_core.data.sources import open_source
from timoe_core.data.token_files import Outputs
from timoe_core.data.tokenise import Counts, tokenise_into
from timoe_core.errors import TimoeError
from timoe_core.lock import output_lock
from timoe_core.timeslices import TimeSlicing, parse_query_date
from timoe_core.tokenizer import get_tokenizer


def _empty_corpus_message(counts: Counts, slicing: TimeSlicing, source: str) -> str:
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
    with output_lock(required_out(cfg.out).expanduser()):
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

    staging = Staging(out, cfg.overwrite)
    spill = Spill(staging.path / SPILL_DIRNAME, slicing.years)
    outputs = Outputs(staging.path, slicing.years)
    pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="timoe-tokenise")
    try:
        t0 = time.perf_counter()
        counts = tokenise_into(cfg, source, tokenizer, slicing, spill, pool, progress_callback,
                               until)
        pool.shutdown(wait=True)
        for year in slicing.years:
            write_year(outputs, year, spill.sources(year), cfg.max_docs, counts.skipped)
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
        return finish_data_dir(staging, outputs, cfg, manifest)
    except BaseException as exc:
        pool.shutdown(wait=True, cancel_futures=True)
        spill.abort()
        outputs.abort()
        staging.discard()
        raise_naming_the_path(exc, out)
        raise
