"""The token files of a data dir being written: `train|val/YEAR.bin` and their `.idx`,
appended through buffered writers and hashed (sha256) on the way, with the per-(split,
year) counts of the manifest."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from timoe_core.data.manifest import (
    INDEX_DTYPE,
    FileEntry,
    Split,
    SplitStats,
    YearStats,
    index_file_relpath,
    token_file_relpath,
)

TOKEN_DTYPE = np.dtype("<u2")
WRITE_BUFFER_BYTES = 1 << 20


class TokenFile:
    """One train/YEAR.bin or val/YEAR.bin: buffered appends, sha256 on the way."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = open(path, "wb", buffering=WRITE_BUFFER_BYTES)  # noqa: SIM115
        self._sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: np.ndarray) -> None:
        view = data.data.cast("B")  # the array's own buffer (memoryview), as bytes
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


class Outputs:
    """The token files of a staging folder and their per-(split, year) counts."""

    def __init__(self, root: Path, years: Sequence[int]) -> None:
        self.root = root
        self.files: dict[str, TokenFile] = {}
        self.stats: dict[int, YearStats] = {y: YearStats() for y in years}

    def _file(self, rel: str) -> TokenFile:
        f = self.files.get(rel)
        if f is None:
            f = self.files[rel] = TokenFile(self.root / rel)
        return f

    def write_index(self, split: Split, year: int, records: np.ndarray) -> None:
        self._file(index_file_relpath(split, year)).write(records.astype(INDEX_DTYPE))

    def write(self, split: Split, year: int, data: np.ndarray, documents: int) -> None:
        """Append `documents` documents' tokens (TOKEN_DTYPE) to split/YEAR.bin."""
        rel = token_file_relpath(split, year)
        f = self._file(rel)
        f.write(data)
        s: SplitStats = getattr(self.stats[year], split)
        s.tokens += len(data)
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
