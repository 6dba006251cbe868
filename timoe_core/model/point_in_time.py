"""The point-in-time rule, once: which trained artefacts (expert weights, router
snapshots) an answer as of a date may use.

point-in-time (the default; `strict` is its older name): an artefact is usable as of d
only if every text that shaped it is dated on or before d, i.e. its data cutoff is <= d.
inclusive (the paper code's rule, kept as an option): a slice's artefact is usable once
the slice has started, which leaks up to one slice of future text.

Every caller asks here: the mixture (`TiMoE.usable_artefacts`, `router_for`), the staged
training driver (the artefacts of each stage), export (a single run dir as of
--query-date), and, through the mixture, evaluation, the harness and generation.
`timeslices` only slices years and reads dates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import Literal, Protocol, TypeVar

from timoe_core.errors import TimoeError
from timoe_core.timeslices import (
    AnswerCutoffs,
    CutoffEvery,
    TimeSlice,
    parse_query_date,
    period_end,
    period_start,
)

Policy = Literal["point-in-time", "strict", "inclusive"]
POLICIES: tuple[Policy, ...] = ("point-in-time", "strict", "inclusive")
DEFAULT_POLICY: Policy = "point-in-time"
# answer_cutoffs (AnswerCutoffs): "any", or a period (month, quarter, year): an answer as
# of d then uses what an answer as of the last such period end on or before d would, so
# one monthly build answers as a quarterly or yearly build would (evaluate
# --answer-cutoffs year). A stage that learned nothing new writes no artefact, so the
# artefact in effect at a period end may have an earlier cutoff: the rule moves the date,
# never filters artefacts by their own cutoff.


def answer_date(when: date, answer_cutoffs: AnswerCutoffs) -> date:
    """The date whose artefacts answer as of `when`: `when` itself, or under a period the
    last period end on or before it (never later than `when`: no leak)."""
    if answer_cutoffs == "any":
        return when
    every: CutoffEvery = answer_cutoffs
    # the day before its period's first day ends the previous period
    return when if period_end(when, every) == when else (
        period_start(when, every) - timedelta(days=1))


def first_answer_date(first_usable: date, answer_cutoffs: AnswerCutoffs) -> date:
    """The first date that `answer_date` maps on or after `first_usable`."""
    if answer_cutoffs == "any":
        return first_usable
    every: CutoffEvery = answer_cutoffs
    return period_end(first_usable, every)


def staleness_days(when: date, cutoffs: Iterable[date]) -> int:
    """How stale an answer as of `when` is: days from the latest cutoff it uses to `when`."""
    return (when - max(cutoffs)).days


def canonical_policy(policy: str) -> Literal["point-in-time", "inclusive"]:
    """`strict` is an alias of `point-in-time`; TimoeError for an unknown policy."""
    if policy == "inclusive":
        return "inclusive"
    if policy in ("point-in-time", "strict"):
        return "point-in-time"
    raise TimoeError(f"unknown eligibility policy {policy!r}: use one of {', '.join(POLICIES)}")


class Dated(Protocol):
    """An artefact as the rule sees it: its slice and the date of its latest text."""

    @property
    def time_slice(self) -> TimeSlice: ...

    @property
    def cutoff(self) -> date: ...


class Ordered(Dated, Protocol):
    @property
    def label(self) -> str: ...

    @property
    def order(self) -> tuple[date, int]: ...


class Snapshot(Protocol):
    """A router snapshot as the rule sees it."""

    @property
    def data_cutoff(self) -> date: ...

    @property
    def slice_labels(self) -> list[str]: ...


A = TypeVar("A", bound=Ordered)
S = TypeVar("S", bound=Snapshot)


def is_usable(artefact: Dated, when: date, policy: Policy) -> bool:
    """May an answer as of `when` use `artefact` under `policy`?"""
    if canonical_policy(policy) == "inclusive":
        return artefact.time_slice.start <= when
    return artefact.cutoff <= when


def select_artefacts(records: Iterable[A], when: date, policy: Policy,
                     answer_cutoffs: AnswerCutoffs = "any") -> list[A]:
    """The artefacts usable as of `when`, at most one per slice, in time order: per
    slice, the latest usable one (by cutoff, then generation; of equal ones the last
    given, a run's final weights after its snapshots: a snapshot whose cutoff was raised
    to that of the weights its run started from may tie with them), as of
    `answer_date(when, answer_cutoffs)`. Under inclusive every artefact of a started slice
    is usable, so that is the slice's final one."""
    when = answer_date(when, answer_cutoffs)
    by_label: dict[str, list[A]] = {}
    for rec in records:
        if is_usable(rec, when, policy):
            by_label.setdefault(rec.label, []).append(rec)
    chosen = [max(reversed(recs), key=lambda r: r.order) for recs in by_label.values()]
    return sorted(chosen, key=lambda r: r.time_slice)


def first_usable_date(records: Iterable[Dated], policy: Policy,
                      answer_cutoffs: AnswerCutoffs = "any") -> date:
    """The earliest date as of which some artefact is usable under `policy` (and
    `answer_cutoffs`)."""
    recs = list(records)
    if not recs:
        raise TimoeError("no trained artefact: train at least one expert first")
    if canonical_policy(policy) == "inclusive":
        first = min(r.time_slice.start for r in recs)
    else:
        first = min(r.cutoff for r in recs)
    return first_answer_date(first, answer_cutoffs)


def none_usable(when: date, policy: Policy, first: date) -> TimoeError:
    """The error of a query no artefact may answer, naming the first usable date."""
    return TimoeError(
        f"no expert is eligible as of {when.isoformat()} (policy {policy}): "
        f"the first query date with an eligible expert is {first.isoformat()}"
    )


class _FinalArtefact:
    """A slice's artefact trained on the whole slice (its cutoff is the slice's end)."""

    def __init__(self, time_slice: TimeSlice) -> None:
        self.time_slice = time_slice
        self.cutoff = time_slice.end
        self.label = time_slice.label
        self.order = (self.cutoff, 0)


def eligible_slices(
    slices: Sequence[TimeSlice], query_date: str | int | date, policy: Policy
) -> list[TimeSlice]:
    """The slices whose final artefact is usable as of `query_date`, in time order
    (TimoeError naming the first usable date when there is none)."""
    when = parse_query_date(query_date)
    finals = [_FinalArtefact(s) for s in slices]
    chosen = select_artefacts(finals, when, policy)
    if not chosen:
        raise none_usable(when, policy, first_usable_date(finals, policy))
    return [a.time_slice for a in chosen]


def first_eligible_date(slices: Sequence[TimeSlice], policy: Policy) -> date:
    """The earliest date as of which some slice's final artefact is usable."""
    return first_usable_date([_FinalArtefact(s) for s in slices], policy)


def router_snapshot_for(
    snapshots: Sequence[S], when: date, policy: Policy, usable_labels: list[str],
    answer_cutoffs: AnswerCutoffs = "any",
) -> S | None:
    """The router snapshot an answer as of `when` uses: point-in-time, the one with the
    largest cutoff on or before `answer_date(when, answer_cutoffs)`; inclusive,
    the latest one over exactly the slices that answer (`usable_labels`). None when no
    snapshot fits."""
    if canonical_policy(policy) == "inclusive":
        fits = [r for r in snapshots if r.slice_labels == usable_labels]
    else:
        when = answer_date(when, answer_cutoffs)
        fits = [r for r in snapshots if r.data_cutoff <= when]
    return fits[-1] if fits else None
