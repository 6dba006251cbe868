"""The built-in dated corpus: documents and temporal QA from the timelines in facts.yaml.

Documents state facts in the present tense and never name a year: only a document's
date carries time. A model can tell 2016 from 2019 only by having been trained on the
right slice of text, which is what TiMoE's date masking is about; a dense model trained
on every year has no way to condition on the date and leaks future answers.

Each fact changes on dated days (facts.yaml: to the day, or to the month or year, then
counted from that period's last day). A document is dated to a day of its year and
states every fact it names as it stood on that day: a document of March 2016 names
David Cameron, one of August 2016 Theresa May. Each document is a few fact statements
("The prime minister of the United Kingdom is Theresa May.") plus a little neutral
filler, in a random order but always opening with a fact: TSQA scores a choice after
`<EOT> + question`, the context a fact has at the start of a document. Facts are dealt
from a shuffled deck, so every fact is stated about equally often in every year.

A TSQA item asks one fact as of one day, with choices " <value>.":
- correct: the value on that day;
- past: the latest earlier value that the fact never takes again after that day, and,
  where it differs and is never taken again either, the value at the previous year's
  end (what a model with yearly cutoffs knows): a stale answer;
- future: the next later value that the fact never had up to that day;
- irrelevant: values of other facts of the same kind, never values of this fact.
Where a fact has no such past (or future) value, an extra irrelevant choice takes its
place. Every fact is asked as of every year end 2013-2024; a fact that changes inside
a year is also asked as of month ends in the months after the change (up to
`AFTER_CHANGE_ITEMS` of them, before that year's end) and as of the month end before
it; `since` records the day its correct value took effect.
"""

from __future__ import annotations

import calendar
import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import yaml

from timoe_core.errors import TimoeError
from timoe_core.timeslices import parse_query_date

FIRST_YEAR = 2013
LAST_YEAR = 2024
YEARS: tuple[int, ...] = tuple(range(FIRST_YEAR, LAST_YEAR + 1))
FACTS_FILE = Path(__file__).with_name("facts.yaml")

# Fact-dense documents: tiny experts see each fact-year statement many times within a
# few tens of thousands of training tokens (~130 tokens a document).
FACTS_PER_DOC = 8
FILLER_PER_DOC = 2

# Neutral sentences: true in any year, so they carry no date.
FILLER: tuple[str, ...] = (
    "This page collects short notes on public life.",
    "The notes below are kept brief on purpose.",
    "Readers often ask for a plain summary.",
    "Here is a short list of things worth knowing.",
    "Some of these facts come up often in conversation.",
    "Many people look these things up every week.",
    "It helps to keep such details in one place.",
    "A quick reminder for anyone catching up.",
    "These answers are easy to mix up.",
    "The list is not complete, but it is a start.",
    "Teachers sometimes use lists like this in class.",
    "Quiz nights often ask questions like these.",
    "Each line below states one fact.",
    "Nothing here is meant as an opinion.",
    "Corrections are welcome in the comments.",
    "The same questions come up again and again.",
    "A good quiz team knows all of these.",
    "Travel guides rarely mention most of this.",
    "The rest of the page is about other topics.",
    "Some readers print lists like this one.",
    "Sports fans will know several of these by heart.",
    "Technology readers will recognise a few names here.",
    "News readers will find most of this familiar.",
    "Short facts are easier to remember than long ones.",
)


Precision = Literal["day", "month", "year"]


@dataclass(frozen=True)
class Change:
    """A fact takes `value` from `effective` on (the day itself, or the last day of the
    month or year it is known to)."""

    effective: date
    value: str
    precision: Precision


@dataclass(frozen=True)
class Fact:
    """One timeline: the value of `statement` on 1 January 2013, then its dated changes."""

    fact_id: str
    kind: str
    statement: str  # "The prime minister of the United Kingdom is"
    start: str  # the value on FIRST_YEAR-01-01
    changes: tuple[Change, ...]  # in date order

    def change_on(self, day: date) -> Change | None:
        """The latest change in effect on `day` (None: the start value holds)."""
        current = None
        for change in self.changes:
            if change.effective > day:
                break
            current = change
        return current

    def value_on(self, day: date) -> str:
        change = self.change_on(day)
        return self.start if change is None else change.value

    def value(self, year: int) -> str:
        """The value on 31 December of `year`."""
        return self.value_on(date(year, 12, 31))

    @property
    def values(self) -> tuple[str, ...]:
        """The value at each year end, FIRST_YEAR to LAST_YEAR."""
        return tuple(self.value(y) for y in YEARS)

    @property
    def all_values(self) -> tuple[str, ...]:
        """Every value the fact takes, in order of first appearance."""
        return tuple(dict.fromkeys([self.start, *(c.value for c in self.changes)]))

    def sentence(self, day: date) -> str:
        return f"{self.statement} {self.value_on(day)}."


@dataclass(frozen=True)
class BuiltinDocument:
    text: str
    year: int
    date: str  # ISO date inside `year`: the day its statements are true


@dataclass
class TSQAItem:
    """A temporal multiple-choice question; every TSQA source yields these."""

    question: str
    choices: list[str]  # continuations of the question, each starting with a space
    answer: int  # index of the correct choice
    labels: list[str]  # per choice: correct / past / future / irrelevant
    year: int  # the year of `date` (what readers of year-level results group by)
    fact_id: str = ""
    date: str = ""  # ISO day the question is asked as of; empty: `year`-12-31
    since: str = ""  # ISO day the correct value took effect, when known

    def __post_init__(self) -> None:
        if not self.date:
            self.date = f"{self.year:04d}-12-31"


# A change key's precision by its length: YYYY, YYYY-MM, YYYY-MM-DD.
_PRECISION_OF_LENGTH: dict[int, Precision] = {4: "year", 7: "month", 10: "day"}


def _change_date(fact_id: str, key: object) -> tuple[date, Precision]:
    """A facts.yaml change key as (the day it counts from, its precision)."""
    if isinstance(key, bool):
        key = None
    if isinstance(key, date):  # YAML reads an unquoted YYYY-MM-DD as a date
        return key, "day"
    text = str(key) if isinstance(key, (int, str)) else ""
    precision = _PRECISION_OF_LENGTH.get(len(text), "day")
    try:
        return parse_query_date(text), precision  # a partial date: its period's last day
    except TimoeError:
        raise TimoeError(f"built-in fact {fact_id!r}: change date {key!r} is not YYYY, "
                         "YYYY-MM or YYYY-MM-DD") from None


def _fact(fact_id: str, spec: object) -> Fact:
    """One facts.yaml entry, checked: dates inside FIRST_YEAR-LAST_YEAR in order, each
    change to a new value."""
    if not isinstance(spec, dict) or not {"kind", "statement", "start", "changes"} <= set(spec):
        raise TimoeError(f"built-in fact {fact_id!r} needs kind, statement, start and changes")
    start, raw = spec["start"], spec["changes"]
    if not isinstance(raw, dict) or not raw:
        raise TimoeError(f"built-in fact {fact_id!r}: 'changes' must map dates to values")
    changes: list[Change] = []
    previous, last_day = start, None
    for key, value in raw.items():
        day, precision = _change_date(fact_id, key)
        if not date(FIRST_YEAR, 1, 2) <= day <= date(LAST_YEAR, 12, 31):
            raise TimoeError(f"built-in fact {fact_id!r}: change {key} is outside "
                             f"{FIRST_YEAR}-{LAST_YEAR} (the value on {FIRST_YEAR}-01-01 is "
                             "'start')")
        if last_day is not None and day <= last_day:
            raise TimoeError(f"built-in fact {fact_id!r}: change {key} is not after the one "
                             "before it: list changes in date order, one per day")
        if not all(isinstance(v, str) and v.strip() for v in (start, value)) or value == previous:
            raise TimoeError(f"built-in fact {fact_id!r}: change {key} must give a new, "
                             "non-empty value")
        changes.append(Change(effective=day, value=value, precision=precision))
        previous, last_day = value, day
    return Fact(fact_id=fact_id, kind=str(spec["kind"]), statement=str(spec["statement"]),
                start=start, changes=tuple(changes))


@functools.cache
def load_facts() -> tuple[Fact, ...]:
    """The timelines of facts.yaml, in file order."""
    raw = yaml.safe_load(FACTS_FILE.read_text(encoding="utf-8"))
    return tuple(_fact(fid, spec) for fid, spec in raw.items())


def builtin_documents(
    docs_per_year: int,
    seed: int,
    *,
    facts_per_doc: int = FACTS_PER_DOC,
    filler_per_doc: int = FILLER_PER_DOC,
) -> Iterator[BuiltinDocument]:
    """`docs_per_year` documents for each year 2013-2024, in year order, each dated to a day
    of its year and stating the facts as they stood that day; same seed, same docs."""
    if docs_per_year < 1:
        raise TimoeError(f"docs_per_year must be at least 1, got {docs_per_year}")
    facts = load_facts()
    if not 1 <= facts_per_doc <= len(facts) or not 0 <= filler_per_doc <= len(FILLER):
        raise TimoeError(f"facts_per_doc must be 1-{len(facts)} and filler_per_doc "
                         f"0-{len(FILLER)}")
    for year in YEARS:
        rng = random.Random(f"builtin-docs:{seed}:{year}")
        days = (date(year + 1, 1, 1) - date(year, 1, 1)).days
        deck: list[Fact] = []
        for _ in range(docs_per_year):
            day = date(year, 1, 1) + timedelta(days=rng.randrange(days))
            picked: list[Fact] = []
            while len(picked) < facts_per_doc:
                if not deck:
                    deck = list(facts)
                    rng.shuffle(deck)
                fact = deck.pop()
                if fact in picked:  # a fresh deck can repeat a fact: it waits for the next doc
                    deck.insert(0, fact)
                else:
                    picked.append(fact)
            rest = [f.sentence(day) for f in picked[1:]] + rng.sample(FILLER, filler_per_doc)
            rng.shuffle(rest)
            text = " ".join([picked[0].sentence(day), *rest])
            yield BuiltinDocument(text=text, year=year, date=day.isoformat())


# A change inside a year is asked as of up to this many month ends after it (the first
# and the last before the year end), and as of the month end before it.
AFTER_CHANGE_ITEMS = 2


def _month_ends(first: date, last: date) -> list[date]:
    """Every month's last day d with first <= d <= last."""
    out: list[date] = []
    y, m = first.year, first.month
    while True:
        end = date(y, m, calendar.monthrange(y, m)[1])
        if end > last:
            return out
        if end >= first:
            out.append(end)
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)


def _spread(days: list[date], k: int) -> list[date]:
    """Up to `k` of `days`, evenly spread, always the first and the last."""
    if len(days) <= k:
        return days
    return sorted({days[round(i * (len(days) - 1) / (k - 1))] for i in range(k)})


def question_dates(fact: Fact) -> list[date]:
    """The days a fact is asked as of: every year end, and around each change inside a
    year whose earlier value is a clean stale answer (never the value again later)."""
    asked = {date(y, 12, 31) for y in YEARS}
    for k, change in enumerate(fact.changes):
        year_end = date(change.effective.year, 12, 31)
        if change.effective >= year_end:
            continue  # it counts from the year end: the year-end question asks it
        before = fact.changes[k - 1].value if k else fact.start
        if before in [c.value for c in fact.changes[k:]]:
            continue  # the earlier value comes back: choosing it is not only stale
        nxt = fact.changes[k + 1].effective if k + 1 < len(fact.changes) else None
        stop = min(year_end, nxt) - timedelta(days=1) if nxt else year_end - timedelta(days=1)
        asked.update(_spread(_month_ends(change.effective, stop), AFTER_CHANGE_ITEMS))
        prior = [d for d in _month_ends(date(change.effective.year, 1, 1),
                                        change.effective - timedelta(days=1))
                 if k == 0 or d >= fact.changes[k - 1].effective]
        asked.update(prior[-1:])
    return sorted(asked)


def _item(fact: Fact, day: date, irrelevant_pool: list[str], seed: int) -> TSQAItem:
    rng = random.Random(f"builtin-tsqa:{seed}:{fact.fact_id}:{day.isoformat()}")
    timeline = [(date.min, fact.start)] + [(c.effective, c.value) for c in fact.changes]
    before = [v for when, v in timeline if when <= day]  # ends with the value on `day`
    after = [v for when, v in timeline if when > day]
    correct = before[-1]
    clean_past = [v for v in reversed(before) if v != correct and v not in after]
    labelled = [(correct, "correct")]
    past = clean_past[:1]
    year_end_before = fact.value_on(date(day.year - 1, 12, 31))
    if past and year_end_before != past[0] and year_end_before in clean_past:
        past.append(year_end_before)  # what yearly cutoffs know, when it is another value
    labelled += [(v, "past") for v in past]
    future = [v for v in after if v != correct and v not in before]
    if future:
        labelled.append((future[0], "future"))
    extra = rng.sample(irrelevant_pool, 4 - len(labelled))
    labelled += [(v, "irrelevant") for v in extra]
    rng.shuffle(labelled)
    change = fact.change_on(day)
    return TSQAItem(
        question=fact.statement, choices=[f" {v}." for v, _ in labelled],
        answer=[lab for _, lab in labelled].index("correct"),
        labels=[lab for _, lab in labelled], year=day.year, fact_id=fact.fact_id,
        date=day.isoformat(), since=change.effective.isoformat() if change else "",
    )


def builtin_tsqa(seed: int = 0) -> list[TSQAItem]:
    """The questions of every fact (`question_dates`), from the same timelines as the
    documents, by fact then date.

    The seed picks the irrelevant values and the order of the choices.
    """
    facts = load_facts()
    items = []
    for fact in facts:
        own = set(fact.all_values)
        irrelevant_pool = sorted(
            {v for other in facts if other.kind == fact.kind for v in other.all_values} - own
        )
        items += [_item(fact, day, irrelevant_pool, seed) for day in question_dates(fact)]
    return items
