"""Data orders: which windows each optimizer step reads, as a pure function of where the
stream stands (`DataPosition`) and the step's size, so every rank agrees and a resume is
exact. `ShuffledOrder` (train-expert: one permutation per epoch) and `GroupedOrder`
(coadapt: every step's windows from one group, e.g. one slice)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands: epoch, and windows of it already consumed."""

    epoch: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> DataPosition:
        return cls(int(d["epoch"]), int(d["offset"]))


class DataOrder(Protocol):
    def take(self, position: DataPosition, n: int) -> tuple[np.ndarray, DataPosition]: ...


class ShuffledOrder:
    """Each epoch a fresh permutation of the windows; steps read consecutive runs of it.

    `permutation(epoch)` must be fixed by the epoch (for token windows:
    `TokenWindows.shuffled_indices(seed, epoch)`). A step never straddles epochs: a
    remainder too short for a step is skipped.
    """

    def __init__(self, num_windows: int, permutation: Callable[[int], np.ndarray]) -> None:
        self.num_windows = num_windows
        self._permute = permutation
        self._cache: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._permute(epoch))
        return self._cache[1]

    def take(self, position: DataPosition, n: int) -> tuple[np.ndarray, DataPosition]:
        if n > self.num_windows:
            raise ValueError(f"a step of {n} windows exceeds the {self.num_windows} available")
        epoch, offset = position.epoch, position.offset
        if offset + n > self.num_windows:
            epoch, offset = epoch + 1, 0
        out = self.permutation(epoch)[offset : offset + n]
        return out, DataPosition(epoch, offset + n)


class GroupedOrder:
    """Every step's windows share one group (e.g. one time slice).

    Each epoch: the windows of every group are permuted (seed, epoch, group), cut into
    blocks of one step, and the blocks of all groups are shuffled together (seed,
    epoch). Partial blocks are skipped. `groups[i]` is the group of window i.
    """

    def __init__(self, groups: np.ndarray, seed: int) -> None:
        self.groups = np.asarray(groups)
        self.seed = seed
        self._cache: tuple[int, int, np.ndarray] | None = None

    def blocks(self, epoch: int, n: int) -> np.ndarray:
        """(num_blocks, n) window indices of this epoch, in step order."""
        if self._cache is None or self._cache[:2] != (epoch, n):
            parts = []
            for k, g in enumerate(np.unique(self.groups)):
                members = np.flatnonzero(self.groups == g)
                members = np.random.default_rng([self.seed, epoch, k]).permutation(members)
                usable = len(members) // n * n
                parts.append(members[:usable].reshape(-1, n))
            blocks = np.concatenate(parts) if parts else np.zeros((0, n), dtype=np.int64)
            blocks = blocks[np.random.default_rng([self.seed, epoch]).permutation(len(blocks))]
            self._cache = (epoch, n, blocks)
        return self._cache[2]

    def take(self, position: DataPosition, n: int) -> tuple[np.ndarray, DataPosition]:
        epoch, block = position.epoch, math.ceil(position.offset / n)
        if block >= len(self.blocks(epoch, n)):
            epoch, block = epoch + 1, 0
            if len(self.blocks(epoch, n)) == 0:
                raise ValueError(f"no group has {n} windows for one step")
        return self.blocks(epoch, n)[block], DataPosition(epoch, (block + 1) * n)

