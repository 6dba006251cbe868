"""Shared test setup: offline tokenizer, small threads, and a session-wide tiny corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_SHARED_CACHE = Path(__file__).resolve().parents[1].parent / "shared" / "tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _SHARED_CACHE.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_SHARED_CACHE)
os.environ.setdefault("WANDB_MODE", "disabled")

torch.manual_seed(0)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
