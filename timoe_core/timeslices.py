"""Time slices and query dates: slicing years, reading dates.

Slice boundaries are dates, never indices: the paper's code compared 1-based slice
numbers with 0-based expert indices and admitted the next slice's expert. Which
artefact an answer as of a date may use is the point-in-time rule, in one place:
timoe_core/model/point_in_time.py.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from timoe_core.errors import TimoeError

# How often a staged run cuts its data: a stage (and a snapshot, a router stage) per
# period, its cutoff the period's last day.
CutoffEvery = Literal["month", "quarter", "year"]
CUTOFF_EVERY: tuple[CutoffEvery, ...] = ("month", "quarter", "year")
# Which artefacts may answer a query, by their cutoff (the rule: model/point_in_time.py).
AnswerCutoffs = Literal["any", "month", "quarter", "year"]
ANSWER_CUTOFFS: tuple[AnswerCutoffs, ...] = ("any", "month", "quarter", "year")
_MONTHS_PER_PERIOD: dict[str, int] = {"month": 1, "quarter": 3, "year": 12}


def year_cutoff(year: int) -> date:
    """The data cutoff of text dated by year only: its last day (Y-12-31)."""
    return date(year, 12, 31)


def months_per_period(every: CutoffEvery) -> int:
    """How many calendar months a period of `every` spans."""
    return _MONTHS_PER_PERIOD[every]


def period_end(d: date, every: CutoffEvery) -> date:
    """The last day of the period (calendar month, quarter or year) holding `d`."""
    months = _MONTHS_PER_PERIOD[every]
    last_month = ((d.month - 1) // months + 1) * months
    return date(d.year, last_month, calendar.monthrange(d.year, last_month)[1])


def period_start(d: date, every: CutoffEvery) -> date:
    """The first day of the period (calendar month, quarter or year) holding `d`."""
    months = _MONTHS_PER_PERIOD[every]
    return date(d.year, (d.month - 1) // months * months + 1, 1)


def period_ends(first: date, last: date, every: CutoffEvery) -> list[date]:
    """The ends of every period that overlaps [first, last], earliest first (the last one
    may fall after `last`: a period's cutoff is its end, whatever day its data stops)."""
    out: list[date] = []
    end = period_end(first, every)
    while first <= last:
        out.append(end)
        first = end + timedelta(days=1)
        end = period_end(first, every)
    return out


@dataclass(frozen=True, order=True)
class TimeSlice:
    """A closed range of whole years [start_year, end_year]."""

    start_year: int
    end_year: int

    @property
    def start(self) -> date:
        return date(self.start_year, 1, 1)

    @property
    def end(self) -> date:
        return date(self.end_year, 12, 31)

    @property
    def label(self) -> str:
        if self.start_year == self.end_year:
            return str(self.start_year)
        return f"{self.start_year}-{self.end_year}"

    @property
    def years(self) -> list[int]:
        return list(range(self.start_year, self.end_year + 1))

    def contains_year(self, year: int) -> bool:
        return self.start_year <= year <= self.end_year

    @classmethod
    def from_label(cls, label: str) -> "TimeSlice":
        m = re.fullmatch(r"(\d{4})(?:-(\d{4}))?", label.strip())
        if not m:
            raise TimoeError(f"bad slice label {label!r}: expected YYYY or YYYY-YYYY")
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else start
        if end < start:
            raise TimoeError(f"bad slice label {label!r}: end year before start year")
        return cls(start, end)


@dataclass(frozen=True)
class TimeSlicing:
    """Consecutive slices of `slice_years` years covering [start_year, end_year].

    When the width does not divide the range, the last slice is shorter
    (2013..2024 by 5 gives 2013-2017, 2018-2022, 2023-2024).
    """

    start_year: int = 2013
    end_year: int = 2024
    slice_years: int = 2

    def __post_init__(self) -> None:
        if self.slice_years < 1:
            raise TimoeError(f"--slice-years must be at least 1, got {self.slice_years}")
        if self.start_year > self.end_year:
            raise TimoeError(
                f"--start-year {self.start_year} is after --end-year {self.end_year}: swap them"
            )

    @property
    def slices(self) -> list[TimeSlice]:
        out = []
        for s in range(self.start_year, self.end_year + 1, self.slice_years):
            out.append(TimeSlice(s, min(s + self.slice_years - 1, self.end_year)))
        return out

    @property
    def years(self) -> list[int]:
        return list(range(self.start_year, self.end_year + 1))

    def contains_year(self, year: int) -> bool:
        return self.start_year <= year <= self.end_year

    def slice_for_year(self, year: int) -> TimeSlice:
        if not self.contains_year(year):
            raise TimoeError(
                f"year {year} is outside the slicing {self.start_year}-{self.end_year}: "
                f"choose a year from {self.start_year} to {self.end_year}"
            )
        return self.slices[(year - self.start_year) // self.slice_years]

    def slice_by_label(self, label: str) -> TimeSlice:
        for s in self.slices:
            if s.label == label:
                return s
        labels = ", ".join(s.label for s in self.slices)
        raise TimoeError(f"no slice labelled {label!r}: the slices are {labels}")

    def to_dict(self) -> dict[str, int]:
        return {
            "start_year": self.start_year,
            "end_year": self.end_year,
            "slice_years": self.slice_years,
        }


_DATE_RE = re.compile(r"(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?")
_COMPACT_DATE_RE = re.compile(r"(\d{4})(\d{2})(\d{2})")  # 20190401, compact ISO 8601


def parse_query_date(value: str | int | date) -> date:
    """Read a query date; a partial date means the END of the period it names.

    `2016` -> 2016-12-31, `2016-06` -> 2016-06-30, `2016-06-30` -> itself. "As of 2016"
    includes everything written in 2016.
    """
    if isinstance(value, date):
        return value
    text = str(value).strip()
    m = _DATE_RE.fullmatch(text) or _COMPACT_DATE_RE.fullmatch(text)
    if not m:
        raise TimoeError(f"bad query date {text!r}: use YYYY, YYYY-MM or YYYY-MM-DD")
    year = int(m.group(1))
    if year < 1:  # the calendar has no year 0 (datetime refuses it)
        raise TimoeError(f"bad query date {text!r}: year {year} is before year 1")
    month = int(m.group(2)) if m.group(2) else 12
    if not 1 <= month <= 12:
        raise TimoeError(f"bad query date {text!r}: month {month} is not 1-12")
    last_day = calendar.monthrange(year, month)[1]
    day = int(m.group(3)) if m.group(3) else last_day
    if not 1 <= day <= last_day:
        raise TimoeError(f"bad query date {text!r}: day {day} does not exist in {year}-{month:02d}")
    return date(year, month, day)
