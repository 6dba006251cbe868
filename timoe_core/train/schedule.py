"""Warmup–stable–decay (WSD) learning-rate schedule.

The learning rate of optimizer step `s` (0-based) in a run of `total` steps:

    warmup  s <  W            peak * (s + 1) / W           (reaches the peak at s = W - 1)
    stable  W <= s < total-D  peak
    decay   s >= total - D    peak * (floor + (1 - floor) * shape(p)),
                              p = (s - (total - D) + 1) / D in (0, 1]   (the floor at s = total-1)

with W = warmup_fraction * total and D = decay_fraction * total, rounded half up, and
shape(p) one of
    linear   1 - p
    cosine   (1 + cos(pi p)) / 2
    1-sqrt   1 - sqrt(p)

The schedule is a pure function of the step: it has no state beyond its settings, so
resuming needs only the step. Extending a run (a larger --max-steps) moves the decay to
the new end, which is the point of WSD: the stable phase can be continued.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

DecayShape = Literal["linear", "cosine", "1-sqrt"]
DECAY_SHAPES: tuple[str, ...] = ("linear", "cosine", "1-sqrt")


@dataclass(frozen=True)
class WSDSchedule:
    peak_lr: float
    total_steps: int
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.1
    min_lr_ratio: float = 0.1
    decay_shape: DecayShape = "linear"

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {self.total_steps}")
        if self.decay_shape not in DECAY_SHAPES:
            raise ValueError(f"decay_shape must be one of {DECAY_SHAPES}, got {self.decay_shape!r}")
        if self.warmup_steps + self.decay_steps > self.total_steps:
            raise ValueError("warmup_fraction + decay_fraction must be at most 1")

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup_fraction * self.total_steps + 0.5)

    @property
    def decay_steps(self) -> int:
        return int(self.decay_fraction * self.total_steps + 0.5)

    def factor(self, step: int) -> float:
        """The multiplier of the peak learning rate at optimizer step `step` (0-based)."""
        w, d, total = self.warmup_steps, self.decay_steps, self.total_steps
        if step < w:
            return (step + 1) / w
        decay_start = total - d
        if step < decay_start:
            return 1.0
        p = min(1.0, (step - decay_start + 1) / d)
        if self.decay_shape == "linear":
            shape = 1.0 - p
        elif self.decay_shape == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * p))
        else:
            shape = 1.0 - math.sqrt(p)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape

    def lr(self, step: int) -> float:
        return self.peak_lr * self.factor(step)

    def state_dict(self) -> dict[str, object]:
        """Plain values only (readable with torch.load(weights_only=True))."""
        return asdict(self)


def budget_steps(
    cfg: Any, train_windows: int, global_batch: int, tokens_per_step: int
) -> int:
    """Optimizer steps of a run: --max-steps, else --max-tokens worth, else one epoch
    of `train_windows` (the windows one epoch reads)."""
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    if cfg.max_tokens is not None:
        return max(1, math.ceil(cfg.max_tokens / tokens_per_step))
    return max(1, train_windows // global_batch)
