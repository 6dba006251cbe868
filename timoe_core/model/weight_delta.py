"""A stored state as a delta from its parent's: the rows that changed, and nothing else.

A staged mixture run stores a router snapshot per period and, with coadapt, an adapted
expert per period, each a small step from the artefact it went on from (its parent). In
bfloat16 most of them is bitwise the parent: a router stage updates the embedding rows of
the tokens it read (a fresh AdamW moves no other row, and its weight decay over a few
steps stays below half a bfloat16 step), and `coadapt --adapted-weights blocks` leaves the
token embedding as it was. So a tensor is stored as one of

    whole       the tensor itself (new, reshaped, or mostly changed)
    inherited   not stored: bitwise the parent's
    rows        `NAME.delta_rows` (int64 indices of its first dimension) and
                `NAME.delta_values` (those rows)

Which tensor is which is the `delta` entry of the file's metadata. Comparisons are bitwise
on the stored dtype (a float32 parent's tensors are compared, and inherited, rounded to
the child's bfloat16), so applying the delta to the parent's stored tensors gives exactly
the tensors that were stored: reading a delta is lossless, and its bytes depend only on
the two states (the counterfactual test compares them across builds).
"""

from __future__ import annotations

import json

import torch

ROWS_SUFFIX = ".delta_rows"
VALUES_SUFFIX = ".delta_values"

_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (so -0.0 differs from 0.0, as it does on disk)."""
    if t.dtype == torch.bool:
        return t
    return t.view(_SAME_SIZE_INT[t.element_size()])


def row_delta(state: dict[str, torch.Tensor], parent: dict[str, torch.Tensor]
              ) -> tuple[dict[str, torch.Tensor], str] | None:
    """(the tensors to store, the metadata entry naming the inherited and row-stored
    tensors) for `state` against `parent`, both as stored; None when nothing is inherited,
    so the state is better stored whole."""
    stored: dict[str, torch.Tensor] = {}
    inherited: list[str] = []
    by_rows: list[str] = []
    floats = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(floats) > 1:
        raise ValueError(f"a stored state has one floating-point dtype, not {floats}")
    float_dtype = floats.pop() if floats else torch.float32
    for name, t in state.items():
        p = _as_stored(parent.get(name), float_dtype)
        if p is None or p.shape != t.shape or p.dtype != t.dtype or t.dim() == 0:
            stored[name] = t
            continue
        changed = (_bits(t) != _bits(p)).reshape(t.shape[0], -1).any(dim=1)
        n = int(changed.sum())
        if n == 0:
            inherited.append(name)
        elif 2 * n <= t.shape[0]:  # indices and rows cost less than the whole tensor
            rows = changed.nonzero().flatten().to(torch.int64)
            stored[name + ROWS_SUFFIX] = rows
            stored[name + VALUES_SUFFIX] = t[rows].contiguous()
            by_rows.append(name)
        else:
            stored[name] = t
    if not inherited and not by_rows:
        return None
    return stored, json.dumps({"float_dtype": _DTYPE_NAMES[float_dtype],
                               "inherited": sorted(inherited), "rows": sorted(by_rows)},
                              separators=(",", ":"))


_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_NAMED_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}


def _as_stored(t: torch.Tensor | None, float_dtype: torch.dtype) -> torch.Tensor | None:
    """A parent's tensor as the child stores it: a float32 parent (an expert's final
    weights) under a bfloat16 child is compared, and inherited, rounded to bfloat16."""
    return t.to(float_dtype) if t is not None and t.is_floating_point() else t


def apply_row_delta(stored: dict[str, torch.Tensor], delta: str,
                    parent: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state `row_delta` encoded, from its stored tensors, its metadata entry and the
    parent's state. ValueError when they do not fit together (a damaged file)."""
    spec = json.loads(delta)
    if not isinstance(spec, dict):
        raise ValueError("its delta entry is malformed")
    inherited, by_rows = spec.get("inherited"), spec.get("rows")
    name = spec.get("float_dtype")
    float_dtype = _NAMED_DTYPES.get(name) if isinstance(name, str) else None
    if not (isinstance(inherited, list) and isinstance(by_rows, list)) or float_dtype is None:
        raise ValueError("its delta entry is malformed")
    parent = {k: v for k, v in parent.items() if k in inherited or k in by_rows}
    parent = {k: t for k, v in parent.items() if (t := _as_stored(v, float_dtype)) is not None}
    state = {k: v for k, v in stored.items()
             if not k.endswith((ROWS_SUFFIX, VALUES_SUFFIX))}
    for name in inherited:
        if name not in parent:
            raise ValueError(f"it inherits {name}, which its parent does not hold")
        state[name] = parent[name]
    for name in by_rows:
        rows, values = stored.get(name + ROWS_SUFFIX), stored.get(name + VALUES_SUFFIX)
        base = parent.get(name)
        if rows is None or values is None or base is None or rows.dtype != torch.int64:
            raise ValueError(f"the changed rows of {name} are incomplete")
        if values.dtype != base.dtype or values.shape != (len(rows), *base.shape[1:]) or (
                len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= base.shape[0])):
            raise ValueError(f"the changed rows of {name} do not fit its parent's tensor")
        t = base.clone()
        t[rows] = values
        state[name] = t
    return state
