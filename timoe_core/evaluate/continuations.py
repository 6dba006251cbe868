"""Scoring continuations in batches: the kernel TSQA and the lm-evaluation-harness model
share (inputs, targets and mask; summed log-likelihoods; batches of one date)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from timoe_core.evaluate.evaluated_model import EvaluatedModel


def continuation_batch(
    seqs: Sequence[tuple[list[int], int]], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, targets and the mask of the continuation's targets, (rows, width) each, for
    rows of (context + continuation tokens, continuation length), right-padded with `pad`."""
    width = max(len(s) for s, _ in seqs) - 1
    inp = torch.full((len(seqs), width), pad, dtype=torch.long)
    tgt = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, (s, n_cont) in enumerate(seqs):
        t = torch.tensor(s, dtype=torch.long)
        inp[r, : len(s) - 1] = t[:-1]
        tgt[r, : len(s) - 1] = t[1:]
        mask[r, len(s) - 1 - n_cont : len(s) - 1] = True
    return inp, tgt, mask


def continuation_log_likelihoods(
    model: EvaluatedModel, inp: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor,
    query_dates: Any,
) -> list[float]:
    """Each row's summed log-probability of its continuation (fp64 sum), as of the date(s)."""
    dev = model.device
    lp = model.target_log_probs(inp.to(dev), tgt.to(dev), query_dates)
    picked = torch.where(mask.to(dev), lp.double(), torch.zeros((), dtype=torch.float64,
                                                                device=dev))
    return picked.sum(dim=1).cpu().tolist()


def batches_by_date(order: Sequence[int], date_of: Mapping[int, Any], size: int
                    ) -> Iterator[list[int]]:
    """`order` cut into batches of at most `size` that never hold two dates: what is
    computed for one date never shares a forward pass (its padding, its batch size) with
    items of another, so each item's score is the one it gets alone with its date's items."""
    start = 0
    while start < len(order):
        when = date_of[order[start]]
        end = start + 1
        while end < len(order) and end - start < size and date_of[order[end]] == when:
            end += 1
        yield list(order[start:end])
        start = end
