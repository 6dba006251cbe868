"""Fixed-length training windows over prepared token files, read by numpy.memmap.

A window is seq_len + 1 consecutive tokens (inputs are the first seq_len, targets the
last seq_len). Windows never cross a year's file, so every window has one year, which
is its document date for routing and eligibility. A window's DATE (`window_dates`) is
the date of the document holding its last token: the latest text it reads. Documents are
in date order within a year's file, so the windows dated on or before any day are a
prefix of every year, and of the whole (year-ordered) window set.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from datetime import date
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from timoe_core.data.manifest import (
    Manifest,
    Split,
    index_file_relpath,
    load_manifest,
    read_index,
    token_file_relpath,
)
from timoe_core.errors import TimoeError


class TokenWindows:
    """Random access to non-overlapping windows of `seq_len + 1` tokens.

    Window j of a year starts at token j * seq_len (consecutive windows share one
    boundary token, as in nanoGPT), so a year of n tokens gives (n - 1) // seq_len.
    """

    def __init__(
        self,
        data_dir: Path,
        split: Split,
        years: Iterable[int],
        seq_len: int,
        manifest: Manifest | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.manifest = manifest or load_manifest(self.data_dir)
        self.split = split
        self.seq_len = seq_len
        self.years: list[int] = []
        self._arrays: list[np.memmap] = []
        counts = []
        for year in sorted(set(years)):
            n_tokens = self.manifest.tokens(year, split)
            n_windows = (n_tokens - 1) // seq_len if n_tokens > 1 else 0
            if n_windows <= 0:
                continue
            path = self.data_dir / token_file_relpath(split, year)
            self._arrays.append(np.memmap(path, dtype=np.uint16, mode="r", shape=(n_tokens,)))
            self.years.append(year)
            counts.append(n_windows)
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._first = [0] * len(self.years)  # a year's first window (`dated` cuts it)
        # Year of every window, for batching by date without touching the tokens.
        self.window_years = np.repeat(np.asarray(self.years, dtype=np.int64), counts)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @cached_property
    def window_dates(self) -> np.ndarray:
        """The date (numpy datetime64[D], UTC day) of every window: the date of the
        document holding its last token, read from the years' .idx files. Non-decreasing,
        so `windows_up_to(d)` windows are the ones dated on or before d."""
        parts = []
        for year, n_windows in zip(self.years, np.diff(self._offsets)):
            index = read_index(self.data_dir, self.split, year, self.manifest)
            path = self.data_dir / index_file_relpath(self.split, year)
            ends = np.cumsum(index["tokens"])  # token after each document's last
            if len(ends) == 0 or int(ends[-1]) != self.manifest.tokens(year, self.split):
                raise TimoeError(f"{path} does not describe {token_file_relpath(self.split, year)}"
                                 ": prepare the data again")
            first = self._first[self.years.index(year)]
            last_tokens = (first + np.arange(n_windows, dtype=np.int64) + 1) * self.seq_len
            docs = np.searchsorted(ends, last_tokens, side="right")
            days = index["time_us"][docs].astype("datetime64[us]").astype("datetime64[D]")
            parts.append(days)
        if not parts:
            return np.empty(0, dtype="datetime64[D]")
        return np.concatenate(parts)

    def windows_up_to(self, cutoff: date) -> int:
        """How many windows are dated on or before `cutoff` (they are the first ones)."""
        return int(np.searchsorted(self.window_dates, np.datetime64(cutoff, "D"), side="right"))

    def dated(self, after: date | None, upto: date) -> TokenWindows:
        """The windows dated in (after, upto] (after None: from the first), as windows of
        their own: what a router stage with cutoff `upto` reads after the previous one."""
        dates = self.window_dates
        lo = 0 if after is None else self.windows_up_to(after)
        hi = max(lo, self.windows_up_to(upto))
        out = copy.copy(self)
        years, arrays, firsts, counts = [], [], [], []
        for k, year in enumerate(self.years):
            a, b = max(lo, int(self._offsets[k])), min(hi, int(self._offsets[k + 1]))
            if b > a:
                years.append(year)
                arrays.append(self._arrays[k])
                firsts.append(self._first[k] + a - int(self._offsets[k]))
                counts.append(b - a)
        out.years, out._arrays, out._first = years, arrays, firsts
        out._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        out.window_years = np.repeat(np.asarray(years, dtype=np.int64), counts)
        out.__dict__["window_dates"] = dates[lo:hi]
        return out

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range 0..{len(self) - 1}")
        k = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return k, int(index - self._offsets[k])

    def __getitem__(self, index: int) -> np.ndarray:
        k, j = self._locate(index)
        start = (self._first[k] + j) * self.seq_len
        return np.asarray(self._arrays[k][start : start + self.seq_len + 1], dtype=np.int64)

    def year_of(self, index: int) -> int:
        return self.years[self._locate(index)[0]]

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs+targets as LongTensor (B, seq_len + 1), years as LongTensor (B,))."""
        rows = np.stack([self[int(i)] for i in indices])
        years = self.window_years[np.asarray(indices, dtype=np.int64)]
        return torch.from_numpy(rows), torch.from_numpy(years)

    def shuffled_indices(self, seed: int, epoch: int) -> np.ndarray:
        """A permutation of all windows fixed by (seed, epoch): resumable data order."""
        rng = np.random.default_rng([seed, epoch])
        return rng.permutation(len(self))


def require_windows(windows: TokenWindows, what: str) -> TokenWindows:
    """Refuse an empty window set with a message that says what was empty."""
    if len(windows) == 0:
        raise TimoeError(
            f"no {windows.split} windows of {windows.seq_len + 1} tokens for {what} in "
            f"{windows.data_dir}: prepare more data or use a shorter --seq-len"
        )
    return windows
