"""Outputs get the permissions the user's umask gives a plain file, not mkstemp's 0600,
so colleagues on a shared cluster can read run dirs, bundles and reports."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from timoe_core.config import EvaluateConfig, save_config
from timoe_core.io import atomic_write_json, current_umask
from timoe_core.model.gpt import GPT, GPTConfig
from timoe_core.model.weights import save_model_weights


@pytest.fixture
def umask():
    before = os.umask(0o022)
    os.umask(before)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_outputs_follow_the_umask(tmp_path: Path, umask, mask: int, expected: int):
    umask(mask)
    assert current_umask() == mask
    atomic_write_json(tmp_path / "report.json", {"a": 1})
    cfg_path = save_config(EvaluateConfig(), tmp_path)
    tiny = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1, n_embd=8))
    weights = save_model_weights(tmp_path, tiny)
    for p in (tmp_path / "report.json", cfg_path, weights):
        assert _mode(p) == expected, p
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
