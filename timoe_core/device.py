"""Which torch device a command runs on; below every package that needs one."""

from __future__ import annotations

import re

import torch

from timoe_core.errors import TimoeError


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """auto: CUDA when present, else CPU. One GPU per local rank; `cuda:N` (torch's and
    lm-eval's spelling) is GPU N, for one worker."""
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", preference)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise TimoeError(f"--device must be auto, cpu, cuda or cuda:N, got {preference!r}")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TimoeError(
            f"--device {preference} was asked for but CUDA is not available: use --device cpu"
        )
    count = torch.cuda.device_count()
    if index is None:
        return torch.device("cuda", local_rank % count)
    if int(index) >= count:
        raise TimoeError(
            f"--device {preference}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}"
        )
    if local_rank != 0:
        raise TimoeError(
            f"--device {preference} names one GPU, but this is worker {local_rank} of several "
            "on this machine: give --device cuda, and each worker takes its own GPU"
        )
    return torch.device("cuda", int(index))
