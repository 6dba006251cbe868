"""Each year's documents written in (date, text hash) order, never in the order they came
in: tokenised documents are spilled per year in source order (`Spill`), then each year
is written sorted (`write_year`), from the spill or from the shards a merge reads."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timoe_core.data.manifest import SPLITS
from timoe_core.data.token_files import TOKEN_DTYPE, Outputs, TokenFile

# The staging record of a tokenised document: the index record and its split.
SPILL_DTYPE = np.dtype([("time_us", "<i8"), ("hash", "<u8"), ("tokens", "<i8"), ("val", "u1")])
SPILL_DIRNAME = ".spill"
# Tokens gathered into memory at once when a year is written in order.
GATHER_TOKENS = 1 << 22


class Spill:
    """Tokenised documents of each year in source order, with their staging records,
    until the whole source is read and each year can be written in order."""

    def __init__(self, root: Path, years: Sequence[int]) -> None:
        self.root = root
        self.tokens: dict[int, TokenFile] = {}
        self.records: dict[int, TokenFile] = {}
        self.documents = 0
        self.n_tokens = 0

    def write(self, year: int, tokens: np.ndarray, records: np.ndarray) -> None:
        if year not in self.tokens:
            self.tokens[year] = TokenFile(self.root / f"{year}.bin")
            self.records[year] = TokenFile(self.root / f"{year}.rec")
        self.tokens[year].write(tokens)
        self.records[year].write(records)
        self.documents += len(records)
        self.n_tokens += len(tokens)

    def sources(self, year: int) -> list[OrderedSource]:
        if year not in self.tokens:
            return []
        self.tokens.pop(year).close()
        self.records.pop(year).close()
        records = np.fromfile(self.root / f"{year}.rec", dtype=SPILL_DTYPE)
        return [OrderedSource(self.root / f"{year}.bin", records)]

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def abort(self) -> None:
        for f in [*self.tokens.values(), *self.records.values()]:
            f.abort()


@dataclass
class OrderedSource:
    """Documents in one token file: `records` (SPILL_DTYPE) in the file's order."""

    path: Path
    records: np.ndarray

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.records["tokens"])[:-1]]).astype(np.int64)


def write_year(
    outputs: Outputs, year: int, sources: list[OrderedSource], max_docs: int | None,
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
