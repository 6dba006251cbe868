"""TSQAResult: per-item scores and the metrics over them (accuracy, error rates, their
counts and 95% intervals, per year, and the stale answers after a change that year)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np

from timoe_core.evaluate.intervals import wilson_interval
from timoe_core.evaluate.tsqa.schema import ERROR_LABELS

if TYPE_CHECKING:
    from timoe_core.data.builtin import TSQAItem


def _rates(items: Sequence[TSQAItem], chosen: Sequence[int]) -> tuple[float | None, dict]:
    n = len(items)
    if not n:
        return None, {lab: None for lab in ERROR_LABELS}
    picked = [it.labels[c] for it, c in zip(items, chosen)]
    return (picked.count("correct") / n, {lab: picked.count(lab) / n for lab in ERROR_LABELS})


def _counts(items: Sequence[TSQAItem], chosen: Sequence[int]) -> dict[str, int]:
    """How many items picked the correct answer and each kind of wrong one."""
    picked = [it.labels[c] for it, c in zip(items, chosen)]
    return {lab: picked.count(lab) for lab in ("correct", *ERROR_LABELS)}


def _intervals(counts: dict[str, int], n: int) -> dict[str, list[float] | None]:
    """The 95% Wilson interval of accuracy and of each error rate (keys as error_rates)."""
    out = {}
    for lab, k in counts.items():
        ci = wilson_interval(k, n)
        out["accuracy" if lab == "correct" else lab] = list(ci) if ci else None
    return out


def asked_after_change(item: TSQAItem) -> bool:
    """Asked after its answer changed earlier in the same year and before that year's
    end, with an earlier value among the choices: a question that a model whose cutoffs
    are year ends can only answer from the year before (the stale-answer measure)."""
    if not item.since or "past" not in item.labels:
        return False
    asked, since = date.fromisoformat(item.date), date.fromisoformat(item.since)
    return since.year == asked.year and since <= asked < date(asked.year, 12, 31)


def _group(items: Sequence[TSQAItem], chosen: Sequence[int], chosen_norm: Sequence[int]
           ) -> dict[str, Any]:
    """n, accuracy (raw, normalised), error rates, counts and their 95% intervals."""
    acc, rates = _rates(items, chosen)
    norm, _ = _rates(items, chosen_norm)
    counts = _counts(items, chosen)
    return {"n": len(items), "accuracy": acc, "accuracy_norm": norm, "error_rates": rates,
            "counts": counts, "intervals": _intervals(counts, len(items))}


def stale_answers(items: Sequence[TSQAItem], chosen: Sequence[int],
                  chosen_norm: Sequence[int]) -> dict[str, Any]:
    """Over the items `asked_after_change`: how often the earlier value (a choice labelled
    past) was chosen (`stale`, of `n`), its rate and 95% Wilson interval, and the rest of
    the group's figures."""
    sel = [k for k, it in enumerate(items) if asked_after_change(it)]
    group = _group([items[k] for k in sel], [chosen[k] for k in sel],
                   [chosen_norm[k] for k in sel])
    return {**group, "stale": group["counts"]["past"], "stale_rate": group["error_rates"]["past"],
            "stale_interval": group["intervals"]["past"]}


@dataclass
class TSQAResult:
    """Per-item scores of the items scored, and the metrics over them."""

    items: list[TSQAItem]  # the items scored
    indices: list[int]  # their positions in the list given to `score_tsqa`
    scores: list[list[float]]  # summed log-likelihood of each choice
    lengths: list[list[int]]  # tokens of each choice
    skipped: int = 0  # items with no eligible expert at their date
    skipped_reason: str | None = None
    query_date: str | None = None
    chosen: list[int] = field(init=False)
    chosen_norm: list[int] = field(init=False)
    n: int = field(init=False)
    accuracy: float | None = field(init=False)
    accuracy_norm: float | None = field(init=False)
    error_rates: dict[str, float | None] = field(init=False)
    error_rates_norm: dict[str, float | None] = field(init=False)
    counts: dict[str, int] = field(init=False)  # correct, past, future, irrelevant
    by_year: dict[int, dict[str, Any]] = field(init=False)
    # the items asked in the months after a change of their answer that year
    after_change: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.chosen = [int(np.argmax(s)) for s in self.scores]
        self.chosen_norm = [int(np.argmax(np.asarray(s) / np.asarray(n)))
                            for s, n in zip(self.scores, self.lengths)]
        self.n = len(self.items)
        self.accuracy, self.error_rates = _rates(self.items, self.chosen)
        self.accuracy_norm, self.error_rates_norm = _rates(self.items, self.chosen_norm)
        self.counts = _counts(self.items, self.chosen)
        self.by_year = {}
        for y in sorted({it.year for it in self.items}):
            sel = [k for k, it in enumerate(self.items) if it.year == y]
            self.by_year[y] = _group([self.items[k] for k in sel],
                                     [self.chosen[k] for k in sel],
                                     [self.chosen_norm[k] for k in sel])
        self.after_change = stale_answers(self.items, self.chosen, self.chosen_norm)

    def restricted(self, indices: set[int], reason: str) -> TSQAResult:
        """The same scores over only the items at `indices` (e.g. those every model scored)."""
        keep = [k for k, i in enumerate(self.indices) if i in indices]
        return TSQAResult(
            items=[self.items[k] for k in keep], indices=[self.indices[k] for k in keep],
            scores=[self.scores[k] for k in keep], lengths=[self.lengths[k] for k in keep],
            skipped=self.skipped + len(self.indices) - len(keep), skipped_reason=reason,
            query_date=self.query_date,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "accuracy": self.accuracy, "accuracy_norm": self.accuracy_norm,
            "error_rates": self.error_rates, "error_rates_norm": self.error_rates_norm,
            # the counts behind accuracy and error_rates, and their 95% Wilson intervals
            "counts": self.counts, "intervals": _intervals(self.counts, self.n),
            "by_year": {str(y): v for y, v in sorted(self.by_year.items())},
            # asked after a change of the answer earlier that year: `stale_rate` is the
            # share that chose the earlier value
            "after_change": self.after_change,
            "skipped": self.skipped, "skipped_reason": self.skipped_reason,
        }
