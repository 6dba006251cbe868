"""One TSQA item checked, or built from a source's record: every refusal names the
source, the item and the field."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from timoe_core.errors import TimoeError
from timoe_core.evaluate.tsqa.schema import LABELS, NUM_CHOICES, TSQAFields
from timoe_core.timeslices import parse_query_date

if TYPE_CHECKING:
    from timoe_core.data.builtin import TSQAItem


def _fail(source: str, index: int, fieldname: str, problem: str) -> TimoeError:
    return TimoeError(f"TSQA {source}: item {index}, field {fieldname!r}: {problem}")


def validate_item(item: TSQAItem, index: int, source: str, fields: TSQAFields = TSQAFields()
                  ) -> TSQAItem:
    """Check one item; TimoeError names the item index and the field at fault."""
    _check_parts(item.question, item.choices, item.answer, item.labels, item.year,
                 index, source, fields)
    _check_dates(item.year, item.date, item.since, index, source, fields)
    return item


def _check_parts(question: Any, choices: Any, answer: Any, labels: Any, year: Any,
                 index: int, source: str, fields: TSQAFields) -> None:
    if not isinstance(question, str) or not question.strip():
        raise _fail(source, index, fields.question, "must be a non-empty string")
    if not isinstance(choices, (list, tuple)) or len(choices) != NUM_CHOICES:
        n = len(choices) if isinstance(choices, (list, tuple)) else "no list of"
        raise _fail(source, index, fields.choices, f"has {n} choices, expected {NUM_CHOICES}")
    for c in choices:
        if not isinstance(c, str) or not c.strip():
            raise _fail(source, index, fields.choices, "every choice must be a non-empty string")
    seen: dict[str, int] = {}
    for k, c in enumerate(choices):
        key = " ".join(c.split())
        if key in seen:
            raise _fail(source, index, fields.choices,
                        f"choices {seen[key]} and {k} have the same text {c.strip()!r}: a "
                        "repeated answer cannot be told apart; fix or drop the item")
        seen[key] = k
    if not isinstance(labels, (list, tuple)) or len(labels) != NUM_CHOICES:
        n = len(labels) if isinstance(labels, (list, tuple)) else "no list of"
        raise _fail(source, index, fields.labels, f"has {n} labels, expected one per choice")
    bad = [lab for lab in labels if lab not in LABELS]
    if bad:
        raise _fail(source, index, fields.labels,
                    f"unknown label {bad[0]!r}: use {', '.join(LABELS)}, or map the "
                    f"source's own with --tsqa-label correct={bad[0]} (and so on)")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < NUM_CHOICES:
        raise _fail(source, index, fields.answer,
                    f"must be a choice index 0-{NUM_CHOICES - 1}, got {answer!r}")
    if labels[answer] != "correct" or list(labels).count("correct") != 1:
        raise _fail(source, index, fields.labels,
                    f"exactly the answer (choice {answer}) must be labelled 'correct', "
                    f"got {list(labels)}")
    if isinstance(year, bool) or not isinstance(year, int) or not 1 <= year <= 9999:
        raise _fail(source, index, fields.year, f"must be a year from 1 to 9999, got {year!r}")


def _check_dates(year: int, asked: str, since: str, index: int, source: str,
                 fields: TSQAFields) -> None:
    """`asked` is an ISO day of `year`; `since`, when given, an ISO day no later."""
    try:
        day = date.fromisoformat(asked)
    except (TypeError, ValueError):
        raise _fail(source, index, fields.date, f"must be a day YYYY-MM-DD, got {asked!r}"
                    ) from None
    if day.year != year:
        raise _fail(source, index, fields.date, f"{asked} is not in the item's year {year}")
    if since:
        try:
            start = date.fromisoformat(since)
        except (TypeError, ValueError):
            raise _fail(source, index, fields.since, f"must be a day YYYY-MM-DD, got {since!r}"
                        ) from None
        if start > day:
            raise _fail(source, index, fields.since,
                        f"{since} is after the day the item is asked as of ({asked}): the "
                        "correct answer cannot take effect later")


def _day_of(value: Any) -> date | None:
    """A day from a record's date field: a date, or YYYY[-MM[-DD]] (a partial date is its
    period's last day, as for --query-date)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, (date, int, str)) and not isinstance(value, bool):
        try:
            return parse_query_date(value)
        except TimoeError:
            return None
    return None


def _year_of(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, date):
        return value.year
    if isinstance(value, str):
        m = re.match(r"\s*(\d{4})(?:\d{4}\s*$|\D|$)", value)  # 2019, 2019-04-01, 20190401
        if m:
            return int(m.group(1))
    return None


def item_from_record(rec: Any, index: int, source: str, fields: TSQAFields = TSQAFields()
                     ) -> TSQAItem:
    """One record (a mapping) as a validated TSQAItem."""
    if not isinstance(rec, dict):
        raise TimoeError(f"TSQA {source}: item {index} is a {type(rec).__name__}, not an object")
    for name in (fields.question, fields.choices):
        if name not in rec:
            raise _fail(source, index, name, "is missing")
    if fields.year not in rec and fields.date not in rec:
        raise _fail(source, index, fields.year, f"is missing (give a year or a "
                    f"{fields.date!r} day)")
    raw = rec[fields.choices]
    if not isinstance(raw, (list, tuple)):
        raise _fail(source, index, fields.choices, f"must be a list, got {type(raw).__name__}")
    choices: list[Any] = []
    choice_labels: list[Any] = []
    for c in raw:
        if isinstance(c, dict):
            if fields.choice_text not in c:
                raise _fail(source, index, fields.choices,
                            f"a choice object has no {fields.choice_text!r} key")
            choices.append(c[fields.choice_text])
            choice_labels.append(c.get(fields.choice_label))
        else:
            choices.append(c)
            choice_labels.append(None)
    if fields.labels in rec:
        labels = rec[fields.labels]
    elif all(lab is not None for lab in choice_labels) and choice_labels:
        labels = choice_labels
    else:
        raise _fail(source, index, fields.labels, "is missing (one label per choice: "
                    + "/".join(LABELS) + ")")
    if isinstance(labels, (list, tuple)):
        labels = [fields.our_label(lab) for lab in labels]

    if fields.answer in rec:
        answer = _answer_index(rec[fields.answer], choices)
        if answer is None:
            raise _fail(source, index, fields.answer,
                        f"{rec[fields.answer]!r} is neither a choice index, a letter A-D nor a "
                        "choice's text")
    elif isinstance(labels, list) and labels.count("correct") == 1:
        answer = labels.index("correct")
    else:
        raise _fail(source, index, fields.answer, "is missing and no single choice is 'correct'")

    day = None
    if rec.get(fields.date) is not None:
        day = _day_of(rec[fields.date])
        if day is None:
            raise _fail(source, index, fields.date,
                        f"must be a day YYYY-MM-DD (or YYYY-MM, YYYY), got {rec[fields.date]!r}")
    year = _year_of(rec[fields.year]) if fields.year in rec else day.year if day else None
    if year is None:
        raise _fail(source, index, fields.year, f"must be a year, got {rec[fields.year]!r}")
    if day is not None and day.year != year:
        raise _fail(source, index, fields.date, f"{day} is not in the item's year {year}")
    since = None
    if rec.get(fields.since) not in (None, ""):
        since = _day_of(rec[fields.since])
        if since is None:
            raise _fail(source, index, fields.since,
                        f"must be a day YYYY-MM-DD, got {rec[fields.since]!r}")
    question = rec[fields.question]
    if isinstance(question, str):
        choices = [_as_continuation(question, c) if isinstance(c, str) else c for c in choices]
    _check_parts(question, choices, answer, labels, year, index, source, fields)
    asked = (day or date(year, 12, 31)).isoformat()
    _check_dates(year, asked, since.isoformat() if since else "", index, source, fields)
    from timoe_core.data.builtin import TSQAItem

    return TSQAItem(question=question, choices=list(choices), answer=answer, labels=list(labels),
                    year=year, fact_id=str(rec.get("fact_id", rec.get("id", index))),
                    date=asked, since=since.isoformat() if since else "")


def _answer_index(value: Any, choices: list[Any]) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        if len(text) == 1 and text.upper() in "ABCD":
            return "ABCD".index(text.upper())
        for i, c in enumerate(choices):
            if isinstance(c, str) and c.strip() == text:
                return i
    return None


def _as_continuation(question: str, choice: str) -> str:
    """A choice continues the question: give it the leading space GPT-2 BPE expects."""
    if choice[:1].isspace() or question[-1:].isspace():
        return choice
    return " " + choice
