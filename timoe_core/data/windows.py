"""Fixed-length training windows over prepared token files, read by numpy.memmap.

A window is seq_len + 1 consecutive tokens (inputs are the first seq_len, targets the
last seq_len). Windows never cross a year's file, so every window has one year, which
is its document date for routing and eligibility.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from timoe_core.data.manifest import Manifest, Split, load_manifest, token_file_relpath
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
        # Year of every window, for batching by date without touching the tokens.
        self.window_years = np.repeat(np.asarray(self.years, dtype=np.int64), counts)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range 0..{len(self) - 1}")
        k = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return k, int(index - self._offsets[k])

    def __getitem__(self, index: int) -> np.ndarray:
        k, j = self._locate(index)
        start = j * self.seq_len
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
