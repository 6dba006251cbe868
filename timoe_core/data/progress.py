"""What a prepare-data run reports: its progress after every batch, and why documents
were skipped (the manifest's `skipped`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SKIP_REASONS: tuple[str, ...] = ("out_of_range", "empty", "bad_rows")


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

