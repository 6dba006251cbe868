"""AdamW with weight decay on matrices only.

Parameters with two or more dimensions (linear weights, embeddings) are decayed;
biases and LayerNorm gains/biases are not. Tied parameters (the GPT's lm_head is its
token embedding) appear once. On CUDA the fused AdamW kernel is used.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def param_groups(modules: nn.Module | Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed (>= 2-D) and not decayed."""
    if isinstance(modules, nn.Module):
        modules = [modules]
    seen: set[int] = set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_adamw(
    modules: nn.Module | Iterable[nn.Module],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over `param_groups`; fused by default when every parameter is on CUDA."""
    groups = param_groups(modules, weight_decay)
    if not groups:
        raise ValueError("no trainable parameters to optimise")
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
