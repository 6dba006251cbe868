"""Temporal multiple-choice QA in the TSQA format: load, validate, score.

An item is a question, 4 choices (continuations of the question), the index of the
correct one, a label per choice (correct / past / future / irrelevant) and the day it
is asked as of (`date`; a `year` alone means that year's Dec 31). Each choice is scored
by the log-likelihood of its tokens given `<EOT> + question` (the EOT marks a document
start, as in the training files), read as of the item's date unless a query date
overrides it. Accuracy takes the choice with the highest
summed log-likelihood; `accuracy_norm` the highest mean per token. The error rates
are the share of items whose chosen answer is labelled past / future / irrelevant, so
accuracy + the three error rates = 1.

Sources: `builtin` (the built-in corpus' questions), a .json / .jsonl / .parquet
file, or `hf:NAME[:SPLIT]` through `datasets`. Field names are configurable; a choice
may be a string or an object holding its text and label (as in the paper's TSQA
release). Schemas (`--tsqa-schema`): `timoe` (the field names below) and
`tsqa-release`, the published release's; either is adjusted part by part with
`--tsqa-field PART=KEY` (PART: question, choices, text, label, labels, answer, year,
date, since)
and label values with `--tsqa-label OURS=THEIRS` (OURS: correct, past, future,
irrelevant), e.g. `--tsqa-field choices=options --tsqa-label correct=gold`. Every
error names the source, the item and the field; items whose choices repeat a text
are refused (the duplicate could not be told apart from the answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from timoe_core.errors import TimoeError
from timoe_core.evaluate.intervals import wilson_interval
from timoe_core.evaluate.models import EvaluatedModel
from timoe_core.timeslices import parse_query_date
from timoe_core.tokenizer import get_tokenizer

if TYPE_CHECKING:
    from timoe_core.data.builtin import TSQAItem

LABELS: tuple[str, ...] = ("correct", "past", "future", "irrelevant")
ERROR_LABELS: tuple[str, ...] = ("past", "future", "irrelevant")
NUM_CHOICES = 4
SUBSAMPLE_SEED = 0

# progress(done, total): items scored so far.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TSQAFields:
    """Where a record keeps each part of an item, and how it writes the labels."""

    question: str = "question"
    choices: str = "choices"
    answer: str = "answer"
    labels: str = "labels"
    year: str = "year"
    date: str = "date"  # optional: the day asked as of (without it, `year`'s Dec 31)
    since: str = "since"  # optional: the day the correct answer took effect
    choice_text: str = "text"  # when a choice is an object
    choice_label: str = "label"
    # Our label -> the value the source writes for it (only those that differ).
    label_values: tuple[tuple[str, str], ...] = ()

    def our_label(self, value: Any) -> str:
        text = str(value).strip().lower()
        for ours, theirs in self.label_values:
            if text == theirs.strip().lower():
                return ours
        return text


# `--tsqa-field PART=KEY` parts -> TSQAFields attributes.
FIELD_PARTS = {"question": "question", "choices": "choices", "text": "choice_text",
               "label": "choice_label", "labels": "labels", "answer": "answer", "year": "year",
               "date": "date", "since": "since"}
# Named schemas. `tsqa-release`: the published TSQA (10,063 questions, 2013-2024, one
# JSON file): a question, four choice objects each with its text and its label
# (correct / past / future / irrelevant) and an integer year, as its dataset card
# describes them. Only the card could be read offline: see docs/data-format.md.
TSQA_SCHEMAS: dict[str, TSQAFields] = {
    "timoe": TSQAFields(),
    "tsqa-release": TSQAFields(question="question", choices="choices", choice_text="text",
                               choice_label="label", year="year"),
}


def tsqa_fields_for(schema: str | None = None, fields: dict[str, str] | None = None,
                    labels: dict[str, str] | None = None, base: TSQAFields | None = None
                    ) -> TSQAFields:
    """A schema (default `timoe`, or `base`) with parts and label values replaced."""
    if schema is not None and schema not in TSQA_SCHEMAS:
        raise TimoeError(f"unknown TSQA schema {schema!r}: use {', '.join(TSQA_SCHEMAS)}")
    start = TSQA_SCHEMAS[schema] if schema is not None else (base or TSQAFields())
    changes: dict[str, Any] = {}
    for part, key in (fields or {}).items():
        if part not in FIELD_PARTS:
            raise TimoeError(f"--tsqa-field {part}={key}: unknown part {part!r}: use "
                             f"{', '.join(FIELD_PARTS)}")
        changes[FIELD_PARTS[part]] = key
    values = dict(start.label_values)
    for ours, theirs in (labels or {}).items():
        if ours not in LABELS:
            raise TimoeError(f"--tsqa-label {ours}={theirs}: unknown label {ours!r}: use "
                             f"{', '.join(LABELS)}")
        values[ours] = theirs
    theirs_seen = [v.strip().lower() for v in values.values()]
    if len(set(theirs_seen)) < len(theirs_seen):
        raise TimoeError(f"--tsqa-label gives one value to two labels ({values}): each of "
                         "our labels needs its own value")
    from dataclasses import replace

    return replace(start, **changes, label_values=tuple(sorted(values.items())))


# ------------------------------------------------------------------ validation


def tsqa_fields_from_config(cfg: Any) -> TSQAFields:
    """The TSQAFields an EvaluateConfig describes: its schema, then the single *_field
    options given explicitly, then `tsqa_field` / `tsqa_label`."""
    legacy = {"question": "tsqa_question_field", "choices": "tsqa_choices_field",
              "answer": "tsqa_answer_field", "labels": "tsqa_labels_field",
              "year": "tsqa_year_field", "text": "tsqa_choice_text_field",
              "label": "tsqa_choice_label_field"}
    given = {part: getattr(cfg, name) for part, name in legacy.items()
             if cfg.tsqa_schema is None or name in cfg.model_fields_set}
    return tsqa_fields_for(cfg.tsqa_schema, {**given, **cfg.tsqa_field}, cfg.tsqa_label)


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


# --------------------------------------------------------------------- sources


def _read_json_records(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TimoeError(f"cannot read TSQA file {path}: {exc}") from None
    if path.suffix.lower() == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TimoeError(f"TSQA file {path} line {lineno} is not JSON: {exc.msg}") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TimoeError(f"TSQA file {path} is not JSON (line {exc.lineno}): {exc.msg}") from None
    if isinstance(data, dict):
        for key in ("items", "data", "questions"):
            if isinstance(data.get(key), list):
                return data[key]
        raise TimoeError(f"TSQA file {path} holds an object: expected a list of items, or "
                         "an object with an 'items' list")
    if not isinstance(data, list):
        raise TimoeError(f"TSQA file {path} must hold a list of items")
    return data


def _read_parquet_records(path: Path) -> list[Any]:
    try:
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises many types for damaged files
        raise TimoeError(f"cannot read TSQA file {path} as parquet ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _read_hf_records(spec: str) -> list[Any]:
    name, _, split = spec.partition(":")
    if not name:
        raise TimoeError("--tsqa hf:NAME[:SPLIT] needs a dataset name")
    try:
        import datasets

        if split:
            ds = datasets.load_dataset(name, split=split)
        else:
            dd = datasets.load_dataset(name)
            split = "test" if "test" in dd else next(iter(dd))
            ds = dd[split]
    except Exception as exc:  # datasets raises many types for missing/offline datasets
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TimoeError(f"cannot load TSQA dataset hf:{spec} ({first})") from None
    return [dict(r) for r in ds]


def load_tsqa(
    source: str,
    *,
    fields: TSQAFields = TSQAFields(),
    max_items: int | None = None,
    builtin_seed: int = 0,
) -> list[TSQAItem]:
    """Items from `builtin`, a .json/.jsonl file or `hf:NAME[:SPLIT]`, validated."""
    if source == "builtin":
        from timoe_core.data.builtin import builtin_tsqa

        items = [validate_item(it, i, "builtin") for i, it in
                 enumerate(builtin_tsqa(seed=builtin_seed))]
    else:
        if source.startswith("hf:"):
            records, where = _read_hf_records(source[3:]), source
        else:
            path = Path(source)
            if not path.is_file():
                raise TimoeError(f"TSQA source {source!r} is not builtin, hf:NAME or an existing "
                                 ".json/.jsonl file or .parquet file")
            if path.suffix.lower() == ".parquet":
                records, where = _read_parquet_records(path), str(path)
            else:
                records, where = _read_json_records(path), str(path)
        items = [item_from_record(r, i, where, fields) for i, r in enumerate(records)]
    if not items:
        raise TimoeError(f"TSQA source {source!r} holds no items")
    if max_items is not None and len(items) > max_items:
        keep = np.sort(np.random.default_rng(SUBSAMPLE_SEED).choice(len(items), max_items,
                                                                      replace=False))
        items = [items[int(i)] for i in keep]
    return items


# --------------------------------------------------------------------- scoring


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


def continuation_batch(
    seqs: Sequence[tuple[list[int], int]], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, targets and the mask of the continuation's targets, (rows, width) each, for
    rows of (context + continuation tokens, continuation length), right-padded with `pad`."""
    width = max(len(s) for s, _ in seqs) - 1
    inp = torch.full((len(seqs), width), pad, dtype=torch.long)
    tgt = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, (s, n_cont) in enumerate(seqs):
        t = torch.tensor(s, dtype=torch.long)
        inp[r, : len(s) - 1] = t[:-1]
        tgt[r, : len(s) - 1] = t[1:]
        mask[r, len(s) - 1 - n_cont : len(s) - 1] = True
    return inp, tgt, mask


def continuation_log_likelihoods(
    model: EvaluatedModel, inp: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor,
    query_dates: Any,
) -> list[float]:
    """Each row's summed log-probability of its continuation (fp64 sum), as of the date(s)."""
    dev = model.device
    lp = model.target_log_probs(inp.to(dev), tgt.to(dev), query_dates)
    picked = torch.where(mask.to(dev), lp.double(), torch.zeros((), dtype=torch.float64,
                                                                device=dev))
    return picked.sum(dim=1).cpu().tolist()


def batches_by_date(order: Sequence[int], date_of: Mapping[int, Any], size: int
                    ) -> Iterator[list[int]]:
    """`order` cut into batches of at most `size` that never hold two dates: what is
    computed for one date never shares a forward pass (its padding, its batch size) with
    items of another, so each item's score is the one it gets alone with its date's items."""
    start = 0
    while start < len(order):
        when = date_of[order[start]]
        end = start + 1
        while end < len(order) and end - start < size and date_of[order[end]] == when:
            end += 1
        yield list(order[start:end])
        start = end


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
