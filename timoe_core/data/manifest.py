"""DATA_DIR/manifest.json: what a prepared data folder holds.

Token files are flat little-endian uint16 arrays, `train/2017.bin` and `val/2017.bin`,
documents joined by EOT. The manifest is written last, atomically, so a folder with a
manifest is a complete folder; `load_manifest` checks the files against it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from timoe_core.errors import TimoeError
from timoe_core.io import read_metadata, sha256_file
from timoe_core.timeslices import TimeSlicing

MANIFEST_FILENAME = "manifest.json"
# 2: every token file has its per-document index (.idx: date to the day), which
# cutoffs by month or quarter read. Data of format 1 is refused with how to re-prepare it.
FORMAT_VERSION = 2
Split = Literal["train", "val"]
SPLITS: tuple[Split, ...] = ("train", "val")
# One record per document of a token file, in the file's order (train/YEAR.idx): its
# date (microseconds since the Unix epoch, UTC), text hash and token count (EOT included).
INDEX_DTYPE = np.dtype([("time_us", "<i8"), ("hash", "<u8"), ("tokens", "<i8")])


class SplitStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: int = 0
    documents: int = 0


class YearStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: SplitStats = Field(default_factory=SplitStats)
    val: SplitStats = Field(default_factory=SplitStats)


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes: int
    sha256: str


class SlicingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_year: int
    end_year: int
    slice_years: int


class ShardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_shards: int = 1
    shard_index: int = 0


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    tokenizer: str = "gpt2"
    # uint16 token files: ids below 2**16; bounded so a hand-edited manifest is refused
    # before anything is sized from it.
    vocab_size: int = Field(ge=1, le=1 << 16)
    eot_token: int = Field(ge=0, lt=1 << 16)
    dtype: Literal["uint16"] = "uint16"
    slicing: SlicingSpec
    seq_len: int = Field(ge=2, le=1 << 20)
    val_fraction: float = Field(gt=0.0, le=0.5, allow_inf_nan=False)
    source: str
    shards: list[ShardSpec] = Field(default_factory=lambda: [ShardSpec()])
    # Keys are years as strings (JSON object keys).
    years: dict[str, YearStats] = Field(default_factory=dict)
    # Documents not written, by reason: out_of_range, bad_rows, empty, ...
    skipped: dict[str, int] = Field(default_factory=dict)
    # prepare-data --until: documents dated after this ISO date were left out
    # (counted in skipped["after_until"]); the slicing is unchanged.
    until: str | None = None
    # How the source was read (text/date fields, --max-docs, seed...): shards of one
    # source merge only when read alike. None in data dirs written before it was recorded.
    reading: dict[str, str | int | bool | None] | None = None
    # prepare-data --max-docs: at most this many documents per year, each year's first in
    # (date, text hash) order (counted in skipped["over_max_docs"]).
    max_docs: int | None = Field(None, ge=1)
    # Relative path -> size and checksum, for every token file and index file.
    files: dict[str, FileEntry] = Field(default_factory=dict)

    def time_slicing(self) -> TimeSlicing:
        return TimeSlicing(**self.slicing.model_dump())

    def tokens(self, year: int, split: Split = "train") -> int:
        stats = self.years.get(str(year))
        return getattr(stats, split).tokens if stats else 0

    def years_with_tokens(self, split: Split = "train") -> list[int]:
        return sorted(int(y) for y, s in self.years.items() if getattr(s, split).tokens > 0)

    def years_without_held_out_windows(self) -> list[int]:
        """Years with training text but not one held-out window of seq_len + 1 tokens:
        their perplexity cannot be measured (evaluate reports null for them)."""
        return sorted(
            int(y) for y, s in self.years.items()
            if s.train.tokens > 0 and max(0, (s.val.tokens - 1) // self.seq_len) == 0
        )  # fmt: skip


def token_file_relpath(split: str, year: int) -> str:
    return f"{split}/{year}.bin"


def index_file_relpath(split: str, year: int) -> str:
    """The per-document index of a token file (INDEX_DTYPE records, in order)."""
    return f"{split}/{year}.idx"


def token_files_read(manifest: Manifest, years: Iterable[int]) -> dict[str, str]:
    """{relative path: sha256} of the token files (both splits) of `years`: what an
    artefact that read those years records of its data, and nothing of the other years."""
    wanted = set(years)
    return {rel: entry.sha256 for rel, entry in sorted(manifest.files.items())
            if rel.endswith(".bin") and int(Path(rel).stem) in wanted}


# A partial year's entry in data_files_sha256: "train/2016.bin@2016-07-31", the sha256 of
# the part of the file holding the documents dated on or before that day.
PART_SEPARATOR = "@"


def read_index(data_dir: Path, split: str, year: int, manifest: Manifest | None = None
               ) -> np.ndarray:
    """A year's per-document index (`INDEX_DTYPE` records, in file order); TimoeError
    naming it when it is missing (or, given the manifest, not listed there)."""
    rel = index_file_relpath(split, year)
    path = Path(data_dir) / rel
    if not path.is_file() or (manifest is not None and rel not in manifest.files):
        raise TimoeError(f"{data_dir} has no {rel} (document dates): prepare the data again "
                         "with this timoe")
    return np.fromfile(path, dtype=INDEX_DTYPE)


def documents_up_to(data_dir: Path, split: str, year: int, cutoffs: Sequence[date]
                    ) -> list[int]:
    """Tokens (EOTs included) of a year's file in its documents dated on or before each of
    `cutoffs`: the file's first ones (documents are in date order)."""
    index = read_index(data_dir, split, year)
    out = []
    for cutoff in cutoffs:
        next_day_us = (date.fromordinal(cutoff.toordinal() + 1) - _EPOCH_DAY).days * 86_400_000_000
        out.append(int(index["tokens"][index["time_us"] < next_day_us].sum()))
    return out


_EPOCH_DAY = date(1970, 1, 1)


def data_read_up_to(data_dir: Path, manifest: Manifest, years: Iterable[int],
                    cutoff: date) -> dict[str, str]:
    """What an artefact with data cutoff `cutoff` records of `years` of its data
    (run.json data_files_sha256): the sha256 of each whole token file (both splits) of a
    year ending on or before the cutoff, and for the year the cutoff falls inside, the
    sha256 of the documents dated up to the cutoff (the first bytes of its files), named
    `train/2016.bin@2016-07-31`. Nothing in it depends on a document dated after the
    cutoff, so a build cut at any later day records the same."""
    return data_read_up_to_each(data_dir, manifest, years, [cutoff])[cutoff]


def data_read_up_to_each(data_dir: Path, manifest: Manifest, years: Iterable[int],
                         cutoffs: Sequence[date]) -> dict[date, dict[str, str]]:
    """`data_read_up_to` for each of `cutoffs` (a staged run's snapshots), reading each
    year's index and token files once, however many cutoffs fall inside it."""
    years = list(years)
    out = {c: token_files_read(manifest, [y for y in years if date(y, 12, 31) <= c])
           for c in cutoffs}
    inside: dict[int, list[date]] = {}
    for c in sorted(set(cutoffs)):
        if c.year in years and c < date(c.year, 12, 31):
            inside.setdefault(c.year, []).append(c)
    for year, cuts in inside.items():
        for split in SPLITS:
            rel = token_file_relpath(split, year)
            if rel not in manifest.files:
                continue
            n_bytes = [n * 2 for n in documents_up_to(data_dir, split, year, cuts)]
            shas = sha256_prefixes(Path(data_dir) / rel, n_bytes)
            for c, n, sha in zip(cuts, n_bytes, shas):
                if n:
                    out[c][f"{rel}{PART_SEPARATOR}{c.isoformat()}"] = sha
    return {c: dict(sorted(files.items())) for c, files in out.items()}


def sha256_prefixes(path: Path, n_bytes: Sequence[int]) -> list[str]:
    """sha256 of the first n bytes of a file, for each n of `n_bytes` (non-decreasing), in
    one pass over the file."""
    digest, done, out = hashlib.sha256(), 0, []
    with open(path, "rb") as f:
        for n in n_bytes:
            while done < n:
                chunk = f.read(min(n - done, 8 << 20))
                if not chunk:
                    raise TimoeError(f"{path} is shorter than its index says: prepare the data "
                                     "again")
                digest.update(chunk)
                done += len(chunk)
            out.append(digest.copy().hexdigest())
    return out


def data_read_as_of(files: dict[str, str], cutoff: date) -> dict[str, str]:
    """The entries of a data_files_sha256 record that an artefact with an earlier (or the
    same) cutoff read too: whole years up to the cutoff's year end, parts up to the
    cutoff. (A whole year cannot be cut here: `data_read_up_to` records a partial year.)"""
    out = {}
    for rel, sha in files.items():
        name, _, part = rel.partition(PART_SEPARATOR)
        as_of = date.fromisoformat(part) if part else date(int(Path(name).stem), 12, 31)
        if as_of <= cutoff:
            out[rel] = sha
    return out


def manifest_checksum(data_dir: Path) -> str:
    """sha256 of manifest.json: recorded in run dirs to tie a model to its data."""
    path = Path(data_dir) / MANIFEST_FILENAME
    if not path.is_file():
        raise TimoeError(f"{data_dir} has no {MANIFEST_FILENAME}: run `timoe prepare-data` first")
    return sha256_file(path)


VERIFY_ENV = "TIMOE_VERIFY_DATA"
Verify = Literal["none", "size", "sha256"]


def load_manifest(data_dir: Path, verify: Verify | None = None) -> Manifest:
    """Read and check a data folder's manifest.

    verify="size" (the default) checks every token file exists with the manifest's byte
    count: free, and it catches what a killed copy or download leaves (truncated or
    missing files). verify="sha256" re-hashes every file as well (about 0.9 GB/s on one
    CPU core, so ~20 s per load for a 10B-token corpus): set TIMOE_VERIFY_DATA=sha256
    to make it the default for every command, e.g. once after copying a corpus.
    """
    if verify is None:
        verify = os.environ.get(VERIFY_ENV) or "size"  # type: ignore[assignment]
        if verify not in ("none", "size", "sha256"):
            raise TimoeError(f"{VERIFY_ENV}={verify!r} must be none, size or sha256")
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_FILENAME
    if not data_dir.is_dir():
        raise TimoeError(f"data dir {data_dir} does not exist: run `timoe prepare-data` first")
    if not path.is_file():
        raise TimoeError(
            f"{data_dir} has no {MANIFEST_FILENAME}: it is not a prepared data dir "
            "(run `timoe prepare-data --out DIR` first)"
        )
    manifest = read_metadata(path, Manifest, "prepare the data again")
    if manifest.format_version < FORMAT_VERSION:
        raise TimoeError(
            f"{data_dir} holds data format {manifest.format_version}, without the per-document "
            f"dates that cutoffs by month need (this timoe reads format {FORMAT_VERSION}): "
            f"prepare it again, `timoe prepare-data --source SRC --out {data_dir} --overwrite` "
            f"(its source: {manifest.source})"
        )
    if manifest.format_version != FORMAT_VERSION:
        raise TimoeError(
            f"{path} has format version {manifest.format_version}, this timoe reads "
            f"{FORMAT_VERSION}: use the timoe that wrote it, or prepare the data again"
        )
    if verify != "none":
        for rel, entry in manifest.files.items():
            f = data_dir / rel
            if not f.is_file():
                raise TimoeError(f"token file {f} named in the manifest is missing: prepare again")
            size = f.stat().st_size
            if size != entry.bytes:
                raise TimoeError(
                    f"token file {f} has {size} bytes, the manifest says {entry.bytes}: "
                    "it is truncated or changed; prepare the data again"
                )
            if verify == "sha256" and sha256_file(f) != entry.sha256:
                raise TimoeError(f"token file {f} fails its sha256 check: prepare the data again")
    return manifest


class ModelShape(Protocol):
    """What data checks read of a model (a single GPT, a mixture, an evaluated model)."""

    @property
    def name(self) -> str: ...
    @property
    def tokenizer(self) -> dict[str, Any]: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def block_size(self) -> int: ...


def check_compatible(model: ModelShape, manifest: Manifest, data_dir: Path) -> None:
    """Refuse data tokenised differently from the model's training data, naming the fields."""
    tok = model.tokenizer
    problems = []
    pairs = (("name", manifest.tokenizer), ("vocab_size", manifest.vocab_size),
             ("eot_token", manifest.eot_token))
    for key, data_value in pairs:
        if key in tok and tok[key] != data_value:
            data_field = "tokenizer" if key == "name" else key
            problems.append(
                f"model tokenizer.{key}={tok[key]!r} but data {data_field}={data_value!r}"
            )
    if manifest.vocab_size > model.vocab_size:
        problems.append(
            f"data vocab_size={manifest.vocab_size} exceeds the model's embedding rows "
            f"(model_config.vocab_size={model.vocab_size})"
        )
    if problems:
        raise TimoeError(
            f"model {model.name} and data {data_dir} use different tokenizers: "
            + "; ".join(problems) + ": prepare the data with the model's tokenizer"
        )


def resolve_seq_len(model: ModelShape, manifest: Manifest, seq_len: int | None) -> int:
    """Windows as long as both the model's context and the data's sequence length allow."""
    if seq_len is None:
        return min(model.block_size, manifest.seq_len)
    if seq_len > model.block_size:
        raise TimoeError(
            f"--seq-len {seq_len} exceeds the model's block_size {model.block_size}: "
            f"use at most {model.block_size}"
        )
    return seq_len
