"""Weights files stored as a delta from their parent (model/weight_delta.py,
model/weights.py): lossless, smaller, independent of where the parent lives, and refused
with the fix when the parent is missing or changed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from timoe_core.errors import TimoeError
from timoe_core.model.weight_delta import apply_row_delta, row_delta
from timoe_core.model.weights import (
    copy_weights_file,
    parent_link,
    read_weights_file,
    stored_state,
    write_weights_file,
)


def _states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A parent (float32, as an expert's final weights) and a child that changed three rows
    of its embedding, all of one matrix, and grew another."""
    g = torch.Generator().manual_seed(0)
    parent = {"embed.weight": torch.randn(100, 8, generator=g),
              "fc.weight": torch.randn(4, 8, generator=g),
              "norm.weight": torch.ones(8),
              "out.weight": torch.randn(2, 4, generator=g)}
    child = {k: v.clone() for k, v in parent.items()}
    child["embed.weight"][[3, 50, 99]] += 1.0
    child["fc.weight"] += 0.5
    child["out.weight"] = torch.randn(3, 4, generator=g)  # a new slice: another shape
    return parent, child


def test_a_delta_stores_only_changed_rows_and_gives_back_the_stored_state_bitwise():
    parent, child = _states()
    for dtype in ("float32", "bfloat16"):
        p, c = stored_state(parent, "float32"), stored_state(child, dtype)
        encoded = row_delta(c, p)
        assert encoded is not None
        stored, entry = encoded
        assert json.loads(entry) == {"float_dtype": dtype, "inherited": ["norm.weight"],
                                     "rows": ["embed.weight"]}
        assert stored["embed.weight.delta_rows"].tolist() == [3, 50, 99]
        assert set(stored) == {"embed.weight.delta_rows", "embed.weight.delta_values",
                               "fc.weight", "out.weight"}
        back = apply_row_delta(stored, entry, p)
        assert back.keys() == c.keys()
        for k, v in c.items():  # bitwise, in the child's stored dtype
            assert back[k].dtype == v.dtype and torch.equal(
                back[k].view(torch.int16 if v.dtype == torch.bfloat16 else torch.int32),
                v.view(torch.int16 if v.dtype == torch.bfloat16 else torch.int32)), k
    # nothing in common: stored whole (no delta)
    assert row_delta({"x": torch.ones(3)}, {"x": torch.zeros(3)}) is None


def test_a_negative_zero_is_a_change():
    p = {"w": torch.zeros(4, 2)}
    c = {"w": torch.zeros(4, 2)}
    c["w"][1, 0] = -0.0
    stored, entry = row_delta(c, p)
    assert stored["w.delta_rows"].tolist() == [1]
    assert torch.equal(torch.signbit(apply_row_delta(stored, entry, p)["w"]), torch.signbit(c["w"]))


def test_a_delta_file_is_smaller_reads_back_and_does_not_depend_on_the_parents_place(tmp_path):
    parent, child = _states()
    digests = []
    for place in ("a", "b/c"):
        write_weights_file(tmp_path / place / "parent.safetensors", parent, "float32")
        path = tmp_path / place / "child" / "model.safetensors"
        write_weights_file(path, child, "bfloat16", parent=tmp_path / place / "parent.safetensors")
        digests.append(path.read_bytes())
        assert json.loads(parent_link(path).read_text())["path"] == "../parent.safetensors"
        back = read_weights_file(path, "rebuild it")
        assert all(torch.equal(back[k], v) for k, v in stored_state(child, "bfloat16").items())
    assert digests[0] == digests[1]  # the path is beside the file, not in it
    whole = tmp_path / "whole.safetensors"
    write_weights_file(whole, child, "bfloat16")
    assert len(digests[0]) < whole.stat().st_size / 2
    with safe_open(str(whole), "pt") as f:
        assert "delta" not in (f.metadata() or {})
    assert not parent_link(whole).exists()


def test_a_copied_delta_still_finds_its_parent(tmp_path):
    parent, child = _states()
    write_weights_file(tmp_path / "p" / "model.safetensors", parent, "bfloat16")
    src = tmp_path / "run" / "model.safetensors"
    write_weights_file(src, child, "bfloat16", parent=tmp_path / "p" / "model.safetensors")
    dst = tmp_path / "bundle" / "experts" / "x" / "model.safetensors"
    copy_weights_file(src, dst)
    assert json.loads(parent_link(dst).read_text())["path"] == "../../../p/model.safetensors"
    a, b = read_weights_file(src, ""), read_weights_file(dst, "")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_missing_or_changed_parent_is_refused_naming_it_and_the_fix(tmp_path):
    parent, child = _states()
    pfile = tmp_path / "p" / "model.safetensors"
    write_weights_file(pfile, parent, "float32")
    path = tmp_path / "c" / "model.safetensors"
    write_weights_file(path, child, "bfloat16", parent=pfile)
    write_weights_file(pfile, child, "float32")  # the parent was overwritten
    with pytest.raises(TimoeError, match=r"p/model.safetensors changed since .* "
                                         r"\(sha256 mismatch\): restore it, or rebuild it"):
        read_weights_file(path, "rebuild it")
    shutil.rmtree(tmp_path / "p")
    with pytest.raises(TimoeError, match=r"is stored as a delta from .*p/model.safetensors, "
                                         r"which is missing: restore it, or rebuild it"):
        read_weights_file(path, "rebuild it")
    parent_link(path).unlink()
    with pytest.raises(TimoeError, match=r"model.parent.json, which says where that is, is "
                                         r"missing or unreadable: rebuild it"):
        read_weights_file(path, "rebuild it")


def test_a_long_chain_of_deltas_reads_back_without_recursion(tmp_path, monkeypatch):
    """A monthly router over a century: each snapshot a delta from the one before. Read
    cold (no parent remembered), the chain is walked, not recursed (deeper than Python's
    recursion limit)."""
    import sys

    from timoe_core.model import weights

    depth, limit = 400, 300  # the read runs under a recursion limit below the depth
    state = {"embed.weight": torch.zeros(depth + 1, 2), "out.bias": torch.zeros(3)}
    previous = None
    for k in range(depth + 1):
        state["embed.weight"][k] = float(k + 1)  # one row more each time
        path = tmp_path / f"{k:05d}" / "router.safetensors"
        write_weights_file(path, state, "bfloat16", parent=previous)
        previous = path
    monkeypatch.setattr(weights, "_PARENTS", type(weights._PARENTS)())
    kept = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        back = read_weights_file(previous, "")
    finally:
        sys.setrecursionlimit(kept)
    assert torch.equal(back["embed.weight"], state["embed.weight"].to(torch.bfloat16))
    with safe_open(str(previous), "pt") as f:  # the last one stored one row
        assert f.get_slice("embed.weight.delta_rows").get_shape() == [1]
