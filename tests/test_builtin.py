"""The built-in corpus: real timelines, undated text, and questions that match the text."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from timoe_core.data.builtin import (
    YEARS,
    TSQAItem,
    builtin_documents,
    builtin_tsqa,
    load_facts,
)
from timoe_core.errors import TimoeError
from timoe_core.evaluate.tsqa import validate_item

YEAR_RE = re.compile(r"\b20(1[3-9]|2[0-4])\b")
DOCS_PER_YEAR = 30


@pytest.fixture(scope="module")
def docs():
    return list(builtin_documents(docs_per_year=DOCS_PER_YEAR, seed=0))


@pytest.fixture(scope="module")
def items():
    return builtin_tsqa(seed=0)


def test_same_seed_same_documents_other_seed_other_documents(docs):
    assert list(builtin_documents(docs_per_year=DOCS_PER_YEAR, seed=0)) == docs
    other = list(builtin_documents(docs_per_year=DOCS_PER_YEAR, seed=1))
    assert [d.year for d in other] == [d.year for d in docs]
    assert sum(a.text != b.text for a, b in zip(docs, other)) > 0.9 * len(docs)


def test_docs_per_year_for_every_year_with_dates_inside_the_year(docs):
    assert Counter(d.year for d in docs) == {y: DOCS_PER_YEAR for y in YEARS}
    assert YEARS == tuple(range(2013, 2025))
    assert all(re.fullmatch(rf"{d.year}-\d\d-\d\d", d.date) for d in docs)
    assert len({d.date for d in docs}) > len(YEARS) * 5  # dates spread over the year
    assert Counter(d.year for d in builtin_documents(docs_per_year=1, seed=3)) == {
        y: 1 for y in YEARS}
    with pytest.raises(TimoeError, match="docs_per_year must be at least 1"):
        next(builtin_documents(docs_per_year=0, seed=0))


def test_at_least_40_facts_each_changing_and_known_values():
    facts = load_facts()
    assert len(facts) >= 40
    assert len({f.fact_id for f in facts}) == len(facts)
    assert len({f.statement for f in facts}) == len(facts)  # a question names one fact
    for f in facts:
        assert len(f.values) == len(YEARS) and len(set(f.values)) >= 2, f.fact_id
    by_id = {f.fact_id: f for f in facts}
    # Spot checks against the year-end convention of facts.yaml.
    uk = by_id["uk_prime_minister"]
    assert [uk.value(y) for y in (2015, 2016, 2019, 2022, 2024)] == [
        "David Cameron", "Theresa May", "Boris Johnson", "Rishi Sunak", "Keir Starmer"]
    assert by_id["us_president"].value(2020) == "Donald Trump"
    assert by_id["us_president"].value(2024) == "Joe Biden"
    assert by_id["german_chancellor"].value(2021) == "Olaf Scholz"
    assert by_id["latest_python"].value(2017) == "Python 3.6"
    assert by_id["summer_olympics_host"].value(2020) == "Rio de Janeiro"


def test_no_text_names_a_year(docs):
    for f in load_facts():
        for y in YEARS:
            assert not YEAR_RE.search(f.sentence(y)), f.sentence(y)
    offenders = [d.text for d in docs if YEAR_RE.search(d.text)]
    assert not offenders, offenders[:1]


def test_documents_state_each_fact_evenly_and_open_with_a_fact(docs):
    facts = load_facts()
    for year in (2013, 2020):
        texts = [d.text for d in docs if d.year == year]
        counts = [sum(t.count(f.sentence(year)) for t in texts) for f in facts]
        assert min(counts) >= 1 and max(counts) - min(counts) <= 1  # dealt from a deck
        # Only this year's values: another year's statement never appears.
        for f in facts:
            stale = {f.sentence(y) for y in YEARS} - {f.sentence(year)}
            assert not any(s in t for s in stale for t in texts), f.fact_id
        starts = tuple(f.statement for f in facts)
        assert all(t.startswith(starts) for t in texts)


def test_every_item_validates_with_labels_true_to_the_timeline(items):
    facts = {f.fact_id: f for f in load_facts()}
    assert len(items) == len(facts) * len(YEARS)
    for i, it in enumerate(items):
        assert isinstance(it, TSQAItem)
        validate_item(it, i, "builtin")
        fact = facts[it.fact_id]
        assert it.question == fact.statement
        assert len(set(it.choices)) == 4 and all(c.startswith(" ") for c in it.choices)
        values = [c[1:-1] for c in it.choices]  # " <value>." -> value
        before = set(fact.values[: it.year - 2013])
        after = set(fact.values[it.year - 2013 + 1 :])
        now = fact.value(it.year)
        for v, label in zip(values, it.labels):
            if label == "correct":
                assert v == now
            elif label == "past":
                assert v in before and v != now and v not in after
            elif label == "future":
                assert v in after and v != now and v not in before
            else:
                assert label == "irrelevant" and v not in fact.values
        assert it.labels.count("past") <= 1 and it.labels.count("future") <= 1
    labels = Counter(lab for it in items for lab in it.labels)
    # Most items have a past and a future choice; the rest get an extra irrelevant one.
    assert labels["past"] > 0.6 * len(items) and labels["future"] > 0.6 * len(items)
    # Where the fact had a past value never taken again, the item offers it.
    uk_2020 = next(it for it in items if it.fact_id == "uk_prime_minister" and it.year == 2020)
    by_label = dict(zip(uk_2020.labels, uk_2020.choices))
    assert (by_label["correct"], by_label["past"], by_label["future"]) == (
        " Boris Johnson.", " Theresa May.", " Rishi Sunak.")


def test_questions_are_seeded_and_answers_spread_over_positions(items):
    assert builtin_tsqa(seed=0) == items
    other = builtin_tsqa(seed=1)
    assert [(it.fact_id, it.year, it.question) for it in other] == [
        (it.fact_id, it.year, it.question) for it in items]
    assert sum(a.choices != b.choices for a, b in zip(items, other)) > len(items) // 2
    positions = Counter(it.answer for it in items)
    assert min(positions.values()) > len(items) / 4 * 0.7


def test_the_question_is_read_in_the_documents_of_its_year_with_the_answer(items, docs):
    text_of_year = {y: " ".join(d.text for d in docs if d.year == y) for y in YEARS}
    for it in items:
        text = text_of_year[it.year]
        assert it.question + it.choices[it.answer] in text, (it.fact_id, it.year)
        for c, label in zip(it.choices, it.labels):
            if label != "correct":
                assert it.question + c not in text, (it.fact_id, it.year, c)
