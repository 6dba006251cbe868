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

from timoe_core.evaluate.tsqa.items import item_from_record, validate_item
from timoe_core.evaluate.tsqa.result import TSQAResult, asked_after_change, stale_answers
from timoe_core.evaluate.tsqa.schema import (
    ERROR_LABELS,
    LABELS,
    NUM_CHOICES,
    TSQA_SCHEMAS,
    TSQAFields,
    tsqa_fields_for,
    tsqa_fields_from_config,
)
from timoe_core.evaluate.tsqa.scoring import Progress, score_tsqa
from timoe_core.evaluate.tsqa.sources import load_tsqa

__all__ = [
    "ERROR_LABELS",
    "LABELS",
    "NUM_CHOICES",
    "TSQA_SCHEMAS",
    "Progress",
    "TSQAFields",
    "TSQAResult",
    "asked_after_change",
    "item_from_record",
    "load_tsqa",
    "score_tsqa",
    "stale_answers",
    "tsqa_fields_for",
    "tsqa_fields_from_config",
    "validate_item",
]
