"""Scoring TSQA items: each choice's log-likelihood given `<EOT> + question`, as of the
item's date (or one query date for all)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import TYPE_CHECKING

import torch

from timoe_core.errors import TimoeError
from timoe_core.evaluate.continuations import (
    batches_by_date,
    continuation_batch,
    continuation_log_likelihoods,
)
from timoe_core.evaluate.evaluated_model import EvaluatedModel
from timoe_core.evaluate.tsqa.result import TSQAResult
from timoe_core.evaluate.tsqa.schema import NUM_CHOICES
from timoe_core.timeslices import parse_query_date
from timoe_core.tokenizer import get_tokenizer

if TYPE_CHECKING:
    from timoe_core.data.builtin import TSQAItem

# progress(done, total): items scored so far.
Progress = Callable[[int, int], None]


def _encode_item(item: TSQAItem, tok, block_size: int, index: int) -> list[tuple[list[int], int]]:
    """Per choice: (tokens = EOT + question + choice, number of choice tokens).

    Whitespace ending the question moves onto the choice: GPT-2's BPE writes a space as
    the start of the next word ("Paris" -> " Paris"), so "Q: " + "Paris" encoded apart
    gives a lone space token and a space-less word, a tokenisation the model never saw."""
    question = item.question.rstrip()
    space = item.question[len(question):]
    ctx = [tok.eot_token] + tok.encode(question)
    rows = []
    for c in item.choices:
        cont = tok.encode(space + c if space and not c[:1].isspace() else c)
        if not cont:
            raise TimoeError(f"TSQA item {index}: a choice encodes to no tokens")
        if len(cont) > block_size:
            raise TimoeError(f"TSQA item {index}: a choice has {len(cont)} tokens, more than "
                             f"the model's block_size {block_size}")
        seq = (ctx + cont)[-(block_size + 1):]  # keep the end: the continuation must fit
        rows.append((seq, len(cont)))
    return rows



def score_tsqa(
    model: EvaluatedModel,
    items: Sequence[TSQAItem],
    *,
    query_date: str | None = None,
    batch_items: int = 16,
    progress: Progress | None = None,
) -> TSQAResult:
    """Score every item's choices, each as of its own date (or `query_date` for all);
    items with no eligible expert at their date are skipped."""
    if query_date is not None:
        model.eligible_experts(query_date)  # none eligible at all: bad input
    tok = get_tokenizer(str(model.tokenizer.get("name", "gpt2")))
    if tok.vocab_size > model.vocab_size:  # its ids would index past the embedding
        raise TimoeError(
            f"TSQA text is tokenised with {tok.name} ({tok.vocab_size} tokens), but the model "
            f"has a vocabulary of {model.vocab_size} (its run.json tokenizer: "
            f"{model.tokenizer}): TSQA needs a model trained on {tok.name}-tokenised data"
        )
    when_of: dict[int, date] = {}
    kept: list[int] = []
    reasons: set[str] = set()
    for i, it in enumerate(items):
        when = parse_query_date(query_date if query_date is not None else it.date)
        why = model.ineligibility(when)
        if why is None:
            kept.append(i)
            when_of[i] = when
        else:
            reasons.add(why)

    encoded = {i: _encode_item(items[i], tok, model.block_size, i) for i in kept}
    # Longest first within a date: little padding.
    order = sorted(kept, key=lambda i: (when_of[i], -max(len(s) for s, _ in encoded[i])))
    sums: dict[int, list[float]] = {}
    eot = tok.eot_token
    done = 0
    with torch.inference_mode():
        for chunk in batches_by_date(order, when_of, batch_items):
            inp, tgt, mask = continuation_batch([row for i in chunk for row in encoded[i]], eot)
            per_row = continuation_log_likelihoods(model, inp, tgt, mask, when_of[chunk[0]])
            for j, i in enumerate(chunk):
                sums[i] = per_row[j * NUM_CHOICES : (j + 1) * NUM_CHOICES]
            done += len(chunk)
            if progress is not None:
                progress(done, len(order))

    return TSQAResult(
        items=[items[i] for i in kept], indices=kept, scores=[sums[i] for i in kept],
        lengths=[[n for _, n in encoded[i]] for i in kept], skipped=len(items) - len(kept),
        skipped_reason="; ".join(sorted(reasons)) or None, query_date=query_date,
    )
