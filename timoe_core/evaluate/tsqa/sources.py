"""Reading TSQA items: `builtin`, a .json / .jsonl / .parquet file or `hf:NAME[:SPLIT]`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from timoe_core.errors import TimoeError
from timoe_core.evaluate.tsqa.items import item_from_record, validate_item
from timoe_core.evaluate.tsqa.schema import TSQAFields

if TYPE_CHECKING:
    from timoe_core.data.builtin import TSQAItem

SUBSAMPLE_SEED = 0


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
