"""Perplexity on held-out text, per data year, as of a query date (or a matrix of them).

Perplexity of a year = exp(mean NLL over every target token of that year's val
windows). Without a query date each window is read as of its own year (the end of
it: a bare year means its last day); with one, every window is read as of that date.
A year for which no expert is eligible gets `None` and the reason, never an error.

All work goes through one engine over (query date, data year) cells. Cells whose query
dates admit the same experts give bitwise equal results (the mixture depends on the
date only through its eligible set), so each distinct set is computed once: the
diagonal of a matrix *is* the own-date perplexity, and a dense model's matrix costs one
pass over the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from timoe_core.data.manifest import (  # noqa: F401  (check_compatible re-exported)
    Manifest,
    check_compatible,
    load_manifest,
    resolve_seq_len,
)
from timoe_core.data.windows import TokenWindows
from timoe_core.evaluate.evaluated_model import EvaluatedModel
from timoe_core.evaluate.intervals import mean_log_interval
from timoe_core.timeslices import parse_query_date

# progress(done, total): called after every batch with windows scored so far.
Progress = Callable[[int, int], None]
SUBSAMPLE_SEED = 0


@dataclass
class YearPerplexity:
    year: int
    perplexity: float | None
    tokens: int = 0
    windows: int = 0
    nll: float | None = None  # mean NLL in nats per token
    reason: str | None = None  # why perplexity is None
    # the standard error of `nll` over the windows (each window's mean NLL a sample), and
    # the perplexity's 95% interval from it: how much another draw of windows could move it
    nll_se: float | None = None
    interval: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "perplexity": self.perplexity, "nll": self.nll, "tokens": self.tokens,
            "windows": self.windows, "reason": self.reason, "nll_se": self.nll_se,
            "interval": list(self.interval) if self.interval else None,
        }


@dataclass
class PerplexityResult:
    query_date: str | None  # as given; None = each window's own year
    seq_len: int
    years: dict[int, YearPerplexity] = field(default_factory=dict)

    def by_year(self) -> dict[str, float | None]:
        return {str(y): r.perplexity for y, r in sorted(self.years.items())}

    def overall(self) -> float | None:
        """exp of the mean NLL over every scored token of every year."""
        scored = [(r.nll, r.tokens) for r in self.years.values()
                  if r.perplexity is not None and r.nll is not None]
        tokens = sum(n for _, n in scored)
        if not tokens:
            return None
        return math.exp(sum(nll * n for nll, n in scored) / tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_date": self.query_date, "seq_len": self.seq_len, "overall": self.overall(),
            "years": {str(y): r.to_dict() for y, r in sorted(self.years.items())},
        }


@dataclass
class PerplexityMatrix:
    query_dates: list[str]
    data_years: list[int]
    seq_len: int
    cells: dict[tuple[str, int], YearPerplexity] = field(default_factory=dict)

    def values(self) -> list[list[float | None]]:
        return [[self.cells[(q, y)].perplexity for y in self.data_years] for q in self.query_dates]

    def to_dict(self) -> dict[str, Any]:
        reasons: dict[str, str] = {}
        for q in self.query_dates:
            why = {r for y in self.data_years if (r := self.cells[(q, y)].reason) is not None}
            if why:
                reasons[q] = "; ".join(sorted(why))
        return {
            "query_dates": self.query_dates,
            "data_years": [str(y) for y in self.data_years],
            "perplexity": self.values(),
            "seq_len": self.seq_len,
            "null_reasons": reasons,
        }


# --------------------------------------------------------------------- checks


def subsample(indices: np.ndarray, max_docs: int | None, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """At most `max_docs` of `indices`, the same ones on every run (sorted)."""
    if max_docs is None or len(indices) <= max_docs:
        return indices
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(indices, size=max_docs, replace=False))


# --------------------------------------------------------------------- engine


class _Cells:
    """Windows per data year, and the scoring of (eligibility key, year) groups."""

    def __init__(
        self,
        model: EvaluatedModel,
        data_dir: Path,
        *,
        seq_len: int | None,
        max_docs: int | None,
        years: Iterable[int] | None,
        manifest: Manifest | None,
    ) -> None:
        self.model = model
        self.data_dir = Path(data_dir)
        self.manifest = manifest or load_manifest(self.data_dir)
        check_compatible(model, self.manifest, self.data_dir)
        self.seq_len = resolve_seq_len(model, self.manifest, seq_len)
        with_val = self.manifest.years_with_tokens("val")
        self.data_years = sorted(set(years) if years is not None else with_val)
        self.windows = TokenWindows(self.data_dir, "val", self.data_years, self.seq_len,
                                    self.manifest)
        self.selected: dict[int, np.ndarray] = {}
        for y in self.data_years:
            idx = np.flatnonzero(self.windows.window_years == y)
            if len(idx):
                self.selected[y] = subsample(idx, max_docs)

    def empty_reason(self, year: int) -> str:
        n = self.manifest.tokens(year, "val")
        return (f"{n} val tokens in {year}: fewer than one window of {self.seq_len + 1}"
                if n else f"no val text for {year} in {self.data_dir}")

    def score(
        self,
        cells: Sequence[tuple[str | None, int]],
        batch_size: int,
        progress: Progress | None,
    ) -> dict[tuple[str | None, int], YearPerplexity]:
        """Perplexity of every (query date or None = own year, data year) cell."""
        out: dict[tuple[str | None, int], YearPerplexity] = {}
        groups: dict[tuple[tuple[str, ...], int], date] = {}  # key -> a date that gives it
        cell_group: dict[tuple[str | None, int], tuple[tuple[str, ...], int]] = {}
        for q, y in cells:
            if y not in self.selected:
                out[(q, y)] = YearPerplexity(y, None, reason=self.empty_reason(y))
                continue
            when = parse_query_date(q if q is not None else y)
            why = self.model.ineligibility(when)
            if why is not None:
                out[(q, y)] = YearPerplexity(y, None, reason=why)
                continue
            key = (self.model.eligibility_key(when), y)
            groups.setdefault(key, when)
            cell_group[(q, y)] = key

        # Batches never mix groups (one date and data year each): a cell's result depends
        # on its own windows only, not on which other years or dates are scored with it.
        order = sorted(groups, key=lambda k: (groups[k], k[1]))
        window_nll: dict[tuple[tuple[str, ...], int], list[float]] = {k: [] for k in groups}
        total = sum(len(self.selected[k[1]]) for k in order)
        done = 0
        dev = self.model.device
        with torch.inference_mode():
            for k in order:
                indices = [int(i) for i in self.selected[k[1]]]
                for start in range(0, len(indices), batch_size):
                    chunk = indices[start : start + batch_size]
                    rows, _ = self.windows.batch(chunk)
                    rows = rows.to(dev, non_blocking=True)
                    lp = self.model.target_log_probs(rows[:, :-1], rows[:, 1:], groups[k])
                    window_nll[k] += (-lp.double().mean(dim=1)).tolist()
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)

        for cell, key in cell_group.items():
            n_win = len(self.selected[key[1]])
            tokens = n_win * self.seq_len
            nlls = window_nll[key]
            mean = math.fsum(nlls) / n_win  # every window has seq_len tokens
            se = (math.sqrt(math.fsum((v - mean) ** 2 for v in nlls) / (n_win - 1) / n_win)
                  if n_win > 1 else None)
            out[cell] = YearPerplexity(key[1], math.exp(mean), tokens=tokens, windows=n_win,
                                       nll=mean, nll_se=se, interval=mean_log_interval(nlls))
        return out


def evaluate_perplexity(
    model: EvaluatedModel,
    data_dir: Path,
    *,
    query_date: str | None = None,
    years: Iterable[int] | None = None,
    max_docs: int | None = None,
    batch_size: int = 8,
    seq_len: int | None = None,
    progress: Progress | None = None,
    manifest: Manifest | None = None,
) -> PerplexityResult:
    """Perplexity per data year of the val split, as of `query_date` or each year's own."""
    if query_date is not None:
        model.eligible_experts(query_date)  # no expert at all as of that date: bad input
    cells = _Cells(model, data_dir, seq_len=seq_len, max_docs=max_docs, years=years,
                   manifest=manifest)
    scored = cells.score([(query_date, y) for y in cells.data_years], batch_size, progress)
    return PerplexityResult(query_date, cells.seq_len,
                            {y: scored[(query_date, y)] for y in cells.data_years})


def perplexity_matrix(
    model: EvaluatedModel,
    data_dir: Path,
    *,
    query_dates: Sequence[str] | None = None,
    query_date: str | None = None,
    years: Iterable[int] | None = None,
    max_docs: int | None = None,
    batch_size: int = 8,
    seq_len: int | None = None,
    progress: Progress | None = None,
    manifest: Manifest | None = None,
) -> tuple[PerplexityMatrix, PerplexityResult]:
    """Query date x data year perplexity, plus the per-year result (as of `query_date`,
    or each year's own date) from the same pass: its cells are shared with the matrix.

    Default query dates: the data years themselves (the end of each year).
    """
    cells = _Cells(model, data_dir, seq_len=seq_len, max_docs=max_docs, years=years,
                   manifest=manifest)
    if query_date is not None:
        model.eligible_experts(query_date)
    qs = [str(q) for q in (query_dates if query_dates is not None else cells.data_years)]
    for q in qs:
        parse_query_date(q)  # a malformed date is bad input, before any work
    wanted: list[tuple[str | None, int]] = [(q, y) for q in qs for y in cells.data_years]
    wanted += [(query_date, y) for y in cells.data_years]
    scored = cells.score(list(dict.fromkeys(wanted)), batch_size, progress)
    matrix = PerplexityMatrix(qs, cells.data_years, cells.seq_len,
                              {(q, y): scored[(q, y)] for q in qs for y in cells.data_years})
    per_year = PerplexityResult(query_date, cells.seq_len,
                                {y: scored[(query_date, y)] for y in cells.data_years})
    return matrix, per_year
