"""Where a TSQA record keeps each part of an item: the schemas and their adjustments
(`--tsqa-schema`, `--tsqa-field PART=KEY`, `--tsqa-label OURS=THEIRS`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from timoe_core.errors import TimoeError

LABELS: tuple[str, ...] = ("correct", "past", "future", "irrelevant")
ERROR_LABELS: tuple[str, ...] = ("past", "future", "irrelevant")
NUM_CHOICES = 4


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
    return replace(start, **changes, label_values=tuple(sorted(values.items())))



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
