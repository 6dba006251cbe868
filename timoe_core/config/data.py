"""The config of `prepare-data`."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator

from timoe_core.config.fields import (
    MAX_SEED,
    OUTPUT,
    SCALE,
    SOURCE,
    StrictModel,
    cli,
    refuse_ignored,
)


class PrepareDataConfig(StrictModel):
    source: str = Field(
        "builtin", json_schema_extra=cli(SOURCE),
        description="builtin | fineweb-edu[:CONFIG] | hf:NAME[:CONFIG] | a "
        ".jsonl/.json/.csv/.parquet file or a folder of them.",
    )
    out: Path | None = Field(
        None, description="Data dir to write (manifest.json, train/YEAR.bin, val/YEAR.bin).",
        json_schema_extra=cli(OUTPUT),
    )
    text_field: str = Field("text", description="Field holding the text.",
                            json_schema_extra=cli(SOURCE))
    date_field: str = Field(
        "date", json_schema_extra=cli(SOURCE),
        description="Field holding the date: a year, an ISO date or timestamp, a unix timestamp "
        "or a CC-MAIN dump name (fineweb-edu: its dump field unless given).",
    )
    seq_len: int = Field(1024, ge=8, description="Training window length recorded for readers.",
                         json_schema_extra=cli(OUTPUT))
    val_fraction: float = Field(
        0.005, gt=0.0, le=0.5, json_schema_extra=cli(OUTPUT),
        description="Share of documents held out (chosen by a hash of the text), in (0, 0.5].",
    )
    start_year: int = Field(2013, ge=1900, le=2200, description="First year kept.",
                            json_schema_extra=cli(OUTPUT))
    end_year: int = Field(2024, ge=1900, le=2200, description="Last year kept.",
                          json_schema_extra=cli(OUTPUT))
    slice_years: int = Field(2, ge=1, description="Years per time slice (expert).",
                             json_schema_extra=cli(OUTPUT))
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1,
        description="Tokeniser threads (default: all cores).", json_schema_extra=cli(SCALE),
    )
    overwrite: bool = Field(
        False, description="Replace an existing data dir (only once the new one is complete).",
        json_schema_extra=cli(OUTPUT),
    )
    skip_bad_rows: bool = Field(
        False, json_schema_extra=cli(SOURCE),
        description="Count and skip malformed rows and unreadable dates instead of stopping.",
    )
    num_shards: int = Field(
        1, ge=1, json_schema_extra=cli(SCALE),
        description="Split the corpus across N machines by a hash of each document's text "
        "(never by its position); --merge joins the shards into what one run writes.",
    )
    shard_index: int = Field(0, ge=0, description="Which shard this machine prepares, 0..N-1.",
                             json_schema_extra=cli(SCALE))
    max_docs: int | None = Field(
        None, ge=1, json_schema_extra=cli(SOURCE),
        description="Keep at most N documents per year: each year's first N in (date, text "
        "hash) order, whatever the record order or later records (the whole source is read).",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the built-in corpus.",
                      json_schema_extra=cli(SOURCE))
    # Size of the built-in corpus: documents generated per year.
    builtin_docs_per_year: int = Field(
        400, ge=1, description="Size of the built-in corpus: documents per year.",
        json_schema_extra=cli(SOURCE),
    )
    # Split of an hf:NAME / fineweb-edu source.
    hf_split: str = Field("train", description="Split of an hf: or fineweb-edu source.",
                          json_schema_extra=cli(SOURCE))
    until: str | None = Field(
        None, json_schema_extra=cli(SOURCE),
        description="Leave out documents dated after DATE (YYYY, YYYY-MM or YYYY-MM-DD; a "
        "document dated by year counts as its last day); the slicing stays as it is.",
    )
    merge: list[Path] | None = None  # the data dirs to merge (prepare-data --merge DIR...)

    @model_validator(mode="after")
    def _check(self) -> PrepareDataConfig:
        if self.start_year > self.end_year:
            raise ValueError(
                f"start_year {self.start_year} is after end_year {self.end_year}: swap them"
            )
        if self.shard_index >= self.num_shards:
            raise ValueError(
                f"shard_index {self.shard_index} must be below num_shards {self.num_shards}"
            )
        builtin = self.source == "builtin"
        hub = self.source.startswith(("hf:", "fineweb-edu"))
        merging = bool(self.merge)
        reads = "when a source is read, not with --merge (the inputs were read already)"
        refuse_ignored(self, {
            "builtin_docs_per_year": (builtin and not merging, "to --source builtin"),
            "seed": (builtin and not merging, "to --source builtin (its generator)"),
            "hf_split": (hub and not merging, "to --source hf:NAME or fineweb-edu"),
            **{name: (not merging, reads) for name in (
                "source", "text_field", "date_field", "seq_len", "val_fraction", "start_year",
                "end_year", "slice_years", "skip_bad_rows", "num_shards", "shard_index",
                "max_docs", "until")},
        })
        return self
