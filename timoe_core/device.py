"""Which torch device a command runs on; below every package that needs one."""

from __future__ import annotations

import torch

from timoe_core.errors import TimoeError


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """auto: CUDA when present, else CPU. One GPU per local rank."""
    if preference not in ("auto", "cpu", "cuda"):
        raise TimoeError(f"--device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TimoeError("--device cuda was asked for but CUDA is not available: use --device cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())
