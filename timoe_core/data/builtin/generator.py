"""The built-in dated corpus: documents and temporal QA from the timelines in facts.yaml.

Documents state facts in the present tense and never name a year: only a document's
date carries time. A model can tell 2016 from 2019 only by having been trained on the
right slice of text, which is what TiMoE's date masking is about; a dense model trained
on every year has no way to condition on the date and leaks future answers.

Each document is a few fact statements of its year ("The prime minister of the United
Kingdom is Theresa May.") plus a little neutral filler, in a random order but always
opening with a fact: TSQA scores a choice after `<EOT> + question`, the context a fact
has at the start of a document. Facts are dealt from a shuffled deck, so every fact is
stated about equally often in every year.

A TSQA item asks one fact as of one year, with choices " <value>.":
- correct: the value in that year;
- past: the latest earlier value that the fact never takes again from that year on;
- future: the next later value that the fact never had up to that year;
- irrelevant: values of other facts of the same kind, never values of this fact.
Where a fact has no such past (or future) value at that year, an extra irrelevant
choice takes its place, so every fact is asked in every year 2013-2024.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import yaml

from timoe_core.errors import TimoeError

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


@dataclass(frozen=True)
class Fact:
    """One timeline: the value of `statement` for each year 2013-2024."""

    fact_id: str
    kind: str
    statement: str  # "The prime minister of the United Kingdom is"
    values: tuple[str, ...]  # values[i] is the value in FIRST_YEAR + i

    def value(self, year: int) -> str:
        return self.values[year - FIRST_YEAR]

    def sentence(self, year: int) -> str:
        return f"{self.statement} {self.value(year)}."


@dataclass(frozen=True)
class BuiltinDocument:
    text: str
    year: int
    date: str  # ISO date inside `year`


@dataclass
class TSQAItem:
    """A temporal multiple-choice question; every TSQA source yields these."""

    question: str
    choices: list[str]  # continuations of the question, each starting with a space
    answer: int  # index of the correct choice
    labels: list[str]  # per choice: correct / past / future / irrelevant
    year: int  # the question is asked as of this year
    fact_id: str = ""


def _timeline(fact_id: str, since: object) -> tuple[str, ...]:
    """Expand {year: value from that year on} into one value per year."""
    if not isinstance(since, dict) or not since or min(since) != FIRST_YEAR:
        raise TimoeError(f"built-in fact {fact_id!r}: 'since' must map years to values, "
                         f"starting at {FIRST_YEAR}")
    if max(since) > LAST_YEAR or not all(isinstance(v, str) and v for v in since.values()):
        raise TimoeError(f"built-in fact {fact_id!r}: years must be {FIRST_YEAR}-{LAST_YEAR} "
                         "and values non-empty text")
    values, current = [], None
    for year in YEARS:
        current = since.get(year, current)
        values.append(current)
    if len(set(values)) < 2:
        raise TimoeError(f"built-in fact {fact_id!r} never changes in {FIRST_YEAR}-{LAST_YEAR}")
    return tuple(values)


@functools.cache
def load_facts() -> tuple[Fact, ...]:
    """The timelines of facts.yaml, in file order."""
    raw = yaml.safe_load(FACTS_FILE.read_text(encoding="utf-8"))
    return tuple(
        Fact(fact_id=fid, kind=spec["kind"], statement=spec["statement"],
             values=_timeline(fid, spec["since"]))
        for fid, spec in raw.items()
    )


def builtin_documents(
    docs_per_year: int,
    seed: int,
    *,
    facts_per_doc: int = FACTS_PER_DOC,
    filler_per_doc: int = FILLER_PER_DOC,
) -> Iterator[BuiltinDocument]:
    """`docs_per_year` documents for each year 2013-2024, in year order; same seed, same docs."""
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
            rest = [f.sentence(year) for f in picked[1:]] + rng.sample(FILLER, filler_per_doc)
            rng.shuffle(rest)
            text = " ".join([picked[0].sentence(year), *rest])
            day = date(year, 1, 1) + timedelta(days=rng.randrange(days))
            yield BuiltinDocument(text=text, year=year, date=day.isoformat())


def builtin_tsqa(seed: int = 0) -> list[TSQAItem]:
    """One question per fact and year, from the same timelines as the documents.

    The seed picks the irrelevant values and the order of the choices.
    """
    facts = load_facts()
    items = []
    for fact in facts:
        own = set(fact.values)
        irrelevant_pool = sorted(
            {v for other in facts if other.kind == fact.kind for v in other.values} - own
        )
        for i, year in enumerate(YEARS):
            rng = random.Random(f"builtin-tsqa:{seed}:{fact.fact_id}:{year}")
            correct = fact.values[i]
            before, after = fact.values[:i], fact.values[i + 1 :]
            labelled = [(correct, "correct")]
            past = [v for v in reversed(before) if v != correct and v not in after]
            future = [v for v in after if v != correct and v not in before]
            if past:
                labelled.append((past[0], "past"))
            if future:
                labelled.append((future[0], "future"))
            extra = rng.sample(irrelevant_pool, 4 - len(labelled))
            labelled += [(v, "irrelevant") for v in extra]
            rng.shuffle(labelled)
            items.append(TSQAItem(
                question=fact.statement, choices=[f" {v}." for v, _ in labelled],
                answer=[lab for _, lab in labelled].index("correct"),
                labels=[lab for _, lab in labelled], year=year, fact_id=fact.fact_id,
            ))
    return items
