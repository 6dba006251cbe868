"""The built-in dated corpus (`--source builtin`, `--tsqa builtin`).

Timelines of real facts 2013-2024 (facts.yaml), expanded into dated documents and
temporal multiple-choice questions; see generator.py for the design.
"""

from timoe_core.data.builtin.generator import (
    FIRST_YEAR,
    LAST_YEAR,
    YEARS,
    BuiltinDocument,
    Fact,
    TSQAItem,
    builtin_documents,
    builtin_tsqa,
    load_facts,
)

__all__ = [
    "FIRST_YEAR",
    "LAST_YEAR",
    "YEARS",
    "BuiltinDocument",
    "Fact",
    "TSQAItem",
    "builtin_documents",
    "builtin_tsqa",
    "load_facts",
]
