"""Which documents are held out (`val`): a hash of the text below `val_fraction`, so the
split is the same on every run and machine."""

from __future__ import annotations

from timoe_core.data.batches import text_hash


def val_threshold(val_fraction: float) -> int:
    return int(val_fraction * 2**64)


def is_val(text: str, val_fraction: float) -> bool:
    """Whether a document is held out: the same answer on every run and machine."""
    return text_hash(text) < val_threshold(val_fraction)
