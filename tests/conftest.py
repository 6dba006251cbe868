"""Shared test setup: wandb off, small threads, and a session-wide tiny corpus (the GPT-2
tokenizer ships in the package: no cache dir or network needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")

torch.manual_seed(0)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
