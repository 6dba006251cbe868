"""The built-in corpus: real dated timelines, undated text that states each fact as of the
document's day, and questions that match the text."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date
from itertools import pairwise

import pytest

from timoe_core.data.builtin import (
    YEARS,
    TSQAItem,
    builtin_documents,
    builtin_tsqa,
    load_facts,
)
from timoe_core.data.builtin.generator import _fact, question_dates
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


def _mid_year(change) -> bool:
    return change.effective < date(change.effective.year, 12, 31)


def test_facts_parse_with_every_change_dated_inside_2013_2024_and_many_mid_year():
    facts = load_facts()
    assert len(facts) >= 60
    assert len({f.fact_id for f in facts}) == len(facts)
    assert len({f.statement for f in facts}) == len(facts)  # a question names one fact
    for f in facts:
        days = [c.effective for c in f.changes]
        assert days == sorted(set(days)) and days, f.fact_id
        assert date(2013, 1, 2) <= days[0] and days[-1] <= date(2024, 12, 31), f.fact_id
        values = [f.start, *(c.value for c in f.changes)]
        assert all(a != b for a, b in pairwise(values)), f.fact_id
        assert len(f.values) == len(YEARS) and len(set(f.all_values)) >= 2, f.fact_id
    mid = [c for f in facts for c in f.changes if _mid_year(c)]
    assert len(mid) >= 250  # most changes fall inside a year, not on its last day
    assert len({f.fact_id for f in facts if any(_mid_year(c) for c in f.changes)}) >= 60
    assert Counter(c.precision for c in mid).keys() == {"day", "month"}
    assert Counter(c.effective.month for c in mid).keys() == set(range(1, 13))


def test_known_values_on_their_days():
    by_id = {f.fact_id: f for f in load_facts()}
    uk = by_id["uk_prime_minister"]
    on = uk.value_on
    assert [on(date(2016, 7, 12)), on(date(2016, 7, 13)), on(date(2019, 7, 23)),
            on(date(2019, 7, 24))] == ["David Cameron", "Theresa May", "Theresa May",
                                       "Boris Johnson"]
    assert [on(date(2022, 9, 5)), on(date(2022, 9, 6)), on(date(2022, 10, 24)),
            on(date(2022, 10, 25)), on(date(2024, 7, 5))] == [
        "Boris Johnson", "Liz Truss", "Liz Truss", "Rishi Sunak", "Keir Starmer"]
    # the year-end convention of the old timelines holds at every year end
    assert [uk.value(y) for y in (2015, 2016, 2019, 2022, 2024)] == [
        "David Cameron", "Theresa May", "Boris Johnson", "Rishi Sunak", "Keir Starmer"]
    us = by_id["us_president"]
    assert (us.value_on(date(2017, 1, 19)), us.value_on(date(2017, 1, 20))) == (
        "Barack Obama", "Donald Trump")
    assert us.value(2020) == "Donald Trump" and us.value(2024) == "Joe Biden"
    assert by_id["german_chancellor"].value_on(date(2021, 12, 7)) == "Angela Merkel"
    assert by_id["german_chancellor"].value(2021) == "Olaf Scholz"
    assert by_id["summer_olympics_host"].value(2020) == "Rio de Janeiro"
    # a month-precise change counts from the month's last day, a year-precise one from Dec 31
    ios = by_id["latest_ios"]
    assert (ios.value_on(date(2016, 9, 29)), ios.value_on(date(2016, 9, 30))) == (
        "iOS 9", "iOS 10")
    py = by_id["latest_python"]
    assert (py.value(2017), py.value_on(date(2016, 12, 30)), py.value(2016)) == (
        "Python 3.6", "Python 3.5", "Python 3.6")
    cpp = by_id["latest_cpp_standard"]
    assert (cpp.value_on(date(2017, 12, 30)), cpp.value(2017)) == ("C++14", "C++17")


@pytest.mark.parametrize(("changes", "problem"), [
    ({"2012-12-31": "B"}, "outside 2013-2024"),
    ({2025: "B"}, "outside 2013-2024"),
    ({"2013-01-01": "B"}, "outside 2013-2024"),  # the value on 2013-01-01 is 'start'
    ({"2016-07": "B", "2016-05-02": "C"}, "not after the one before"),
    ({"2016-07-13": "A"}, "new, non-empty value"),
    ({"2016-07-13": "B", "2017-01-20": "B"}, "new, non-empty value"),
    ({"2016-13": "B"}, "is not YYYY, YYYY-MM or YYYY-MM-DD"),
    ({"July 2016": "B"}, "is not YYYY, YYYY-MM or YYYY-MM-DD"),
])
def test_a_bad_timeline_is_refused_naming_the_fact(changes, problem):
    spec = {"kind": "leader", "statement": "The mayor is", "start": "A", "changes": changes}
    with pytest.raises(TimoeError, match=rf"built-in fact 'mayor'.*{problem}"):
        _fact("mayor", spec)
    good = _fact("mayor", {**spec, "changes": {date(2016, 7, 13): "B", "2017-02": "C",
                                                2019: "D"}})
    assert [(c.effective, c.precision) for c in good.changes] == [
        (date(2016, 7, 13), "day"), (date(2017, 2, 28), "month"), (date(2019, 12, 31), "year")]


def test_no_text_names_a_year(docs):
    for f in load_facts():
        for day in [date(2013, 1, 1), *(c.effective for c in f.changes)]:
            assert not YEAR_RE.search(f.sentence(day)), f.sentence(day)
    offenders = [d.text for d in docs if YEAR_RE.search(d.text)]
    assert not offenders, offenders[:1]


def test_documents_state_each_fact_as_of_their_own_day(docs):
    facts = load_facts()
    stated = changed_this_year = 0
    for d in docs:
        day = date.fromisoformat(d.date)
        for f in facts:
            for m in re.finditer(re.escape(f.statement + " "), d.text):
                assert d.text[m.start():].startswith(f.sentence(day)), (d.date, f.fact_id)
                stated += 1
                change = f.change_on(day)
                changed_this_year += change is not None and change.effective.year == day.year
    assert stated == len(docs) * 8
    # a good share states a value that took effect earlier in the document's own year
    assert changed_this_year > 0.12 * stated


def test_a_mid_year_change_shows_in_its_year_s_documents():
    docs = list(builtin_documents(docs_per_year=200, seed=0))
    uk16 = [(d.date, d.text) for d in docs if d.year == 2016 and "United Kingdom is" in d.text]
    cameron = [day for day, t in uk16 if "Kingdom is David Cameron." in t]
    may = [day for day, t in uk16 if "Kingdom is Theresa May." in t]
    assert cameron and may and max(cameron) < "2016-07-13" <= min(may)


def test_documents_state_each_fact_evenly_and_open_with_a_fact(docs):
    facts = load_facts()
    for year in (2013, 2020):
        texts = [d.text for d in docs if d.year == year]
        counts = [sum(t.count(f.statement + " ") for t in texts) for f in facts]
        assert min(counts) >= 1 and max(counts) - min(counts) <= 1  # dealt from a deck
        starts = tuple(f.statement for f in facts)
        assert all(t.startswith(starts) for t in texts)


def test_every_item_validates_with_labels_true_to_the_timeline(items):
    facts = {f.fact_id: f for f in load_facts()}
    assert len(items) == sum(len(question_dates(f)) for f in facts.values())
    assert sum(it.date.endswith("-12-31") for it in items) == len(facts) * len(YEARS)
    assert sum(not it.date.endswith("-12-31") for it in items) >= 600
    for i, it in enumerate(items):
        assert isinstance(it, TSQAItem)
        validate_item(it, i, "builtin")
        fact = facts[it.fact_id]
        day = date.fromisoformat(it.date)
        assert it.year == day.year and it.question == fact.statement
        change = fact.change_on(day)
        assert it.since == (change.effective.isoformat() if change else "")
        assert len(set(it.choices)) == 4 and all(c.startswith(" ") for c in it.choices)
        values = [c[1:-1] for c in it.choices]  # " <value>." -> value
        timeline = [(date.min, fact.start)] + [(c.effective, c.value) for c in fact.changes]
        before = {v for when, v in timeline if when <= day}
        after = {v for when, v in timeline if when > day}
        now = fact.value_on(day)
        for v, label in zip(values, it.labels):
            if label == "correct":
                assert v == now
            elif label == "past":
                assert v in before and v != now and v not in after
            elif label == "future":
                assert v in after and v != now and v not in before
            else:
                assert label == "irrelevant" and v not in fact.all_values
        assert it.labels.count("past") <= 2 and it.labels.count("future") <= 1
    labels = Counter(lab for it in items for lab in it.labels)
    # Most items have a past and a future choice; the rest get an extra irrelevant one.
    assert labels["past"] > 0.6 * len(items) and labels["future"] > 0.6 * len(items)
    uk_2020 = next(it for it in items if it.fact_id == "uk_prime_minister" and it.year == 2020)
    by_label = dict(zip(uk_2020.labels, uk_2020.choices))
    assert (uk_2020.date, by_label["correct"], by_label["past"], by_label["future"]) == (
        "2020-12-31", " Boris Johnson.", " Theresa May.", " Liz Truss.")


def _asked(items, fact_id, day):
    it = next(it for it in items if it.fact_id == fact_id and it.date == day)
    return it, {lab: [c[1:-1] for c, x in zip(it.choices, it.labels) if x == lab]
                for lab in ("correct", "past", "future")}


def test_items_after_a_change_have_the_new_value_correct_and_the_old_one_past(items):
    it, by = _asked(items, "uk_prime_minister", "2016-07-31")  # May since 2016-07-13
    assert (it.since, by["correct"], by["past"]) == ("2016-07-13", ["Theresa May"],
                                                     ["David Cameron"])
    it, by = _asked(items, "uk_prime_minister", "2016-11-30")  # the last month end that year
    assert (it.since, by["correct"], by["past"]) == ("2016-07-13", ["Theresa May"],
                                                     ["David Cameron"])
    it, by = _asked(items, "uk_prime_minister", "2016-06-30")  # before it: May is future
    assert (it.since, by["correct"], by["past"], by["future"]) == (
        "", ["David Cameron"], [], ["Theresa May"])
    # two changes in a year: the value just before, and the one yearly cutoffs know
    it, by = _asked(items, "uk_prime_minister", "2022-11-30")
    assert (by["correct"], sorted(by["past"])) == (["Rishi Sunak"],
                                                   ["Boris Johnson", "Liz Truss"])
    it, by = _asked(items, "us_president", "2017-01-31")
    assert (it.since, by["correct"], by["past"]) == ("2017-01-20", ["Donald Trump"],
                                                     ["Barack Obama"])
    it, by = _asked(items, "latest_ios", "2016-09-30")  # month-precise: from its last day
    assert (it.since, by["correct"], by["past"]) == ("2016-09-30", ["iOS 10"], ["iOS 9"])
    after = {it.date for it in items if it.fact_id == "uk_prime_minister" and it.year == 2016}
    assert after == {"2016-06-30", "2016-07-31", "2016-11-30", "2016-12-31"}
    # an earlier value that comes back later is not a clean stale answer: no month items
    assert {it.date for it in items if it.fact_id == "disney_ceo" and it.year == 2020} == {
        "2020-12-31"}


def test_questions_are_seeded_and_answers_spread_over_positions(items):
    assert builtin_tsqa(seed=0) == items
    other = builtin_tsqa(seed=1)
    assert [(it.fact_id, it.date, it.question) for it in other] == [
        (it.fact_id, it.date, it.question) for it in items]
    assert sum(a.choices != b.choices for a, b in zip(items, other)) > len(items) // 2
    positions = Counter(it.answer for it in items)
    assert min(positions.values()) > len(items) / 4 * 0.7


def test_the_question_is_read_in_the_documents_with_the_answer_of_its_day(items, docs):
    facts = {f.fact_id: f for f in load_facts()}
    text_of_year = {y: " ".join(d.text for d in docs if d.year == y) for y in YEARS}
    for it in items:
        fact = facts[it.fact_id]
        day = date.fromisoformat(it.date)
        assert it.question + it.choices[it.answer] == fact.sentence(day)
        if any(c.effective.year == day.year for c in fact.changes):
            continue  # changed that year: its documents state more than one value
        text = text_of_year[it.year] + " "  # a sentence ends at ". ": "8." is not "8.1."
        assert it.question + it.choices[it.answer] + " " in text, (it.fact_id, it.date)
        for c, label in zip(it.choices, it.labels):
            if label != "correct":
                assert it.question + c + " " not in text, (it.fact_id, it.date, c)
