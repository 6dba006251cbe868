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

The learning rate is a function of the step and of the settings. A checkpoint saves the
schedule's `state_dict` and a resumed run loads it (`load_state_dict`): the warmup a run
started with is kept, while its budget and peak lr are the rerun's (flags may extend a
run or change its lr). So a run stopped inside its warmup and rerun with a larger
--max-steps finishes the warmup it began, and only the decay moves to the new end, which
is the point of WSD: the stable phase can be continued.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

from timoe_core.config import TrainingConfig

DecayShape = Literal["linear", "cosine", "1-sqrt"]
DECAY_SHAPES: tuple[str, ...] = ("linear", "cosine", "1-sqrt")


ScheduleState = dict[str, float | int | str | None]


class Schedule(Protocol):
    """What the trainer asks of a schedule: the lr of a step, and its state to save with a
    checkpoint and to load on resume."""

    def lr(self, step: int) -> float: ...

    def state_dict(self) -> ScheduleState: ...

    def load_state_dict(self, state: ScheduleState) -> None: ...


def _saved_warmup(state: ScheduleState) -> int:
    """The warmup steps a saved schedule ran with (a checkpoint written before the schedule
    saved them holds the fraction and the total it was computed from)."""
    if state.get("warmup_steps") is not None:
        return int(_number(state, "warmup_steps"))
    return int(_number(state, "warmup_fraction") * _number(state, "total_steps") + 0.5)


def _number(state: ScheduleState, key: str) -> float:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"the saved schedule's {key} is {value!r}, not a number")
    return value


@dataclass
class WSDSchedule:
    peak_lr: float
    total_steps: int
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.1
    min_lr_ratio: float = 0.1
    decay_shape: DecayShape = "linear"
    # The warmup a resumed run began with (`load_state_dict`); None: warmup_fraction's.
    kept_warmup_steps: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {self.total_steps}")
        if self.decay_shape not in DECAY_SHAPES:
            raise ValueError(f"decay_shape must be one of {DECAY_SHAPES}, got {self.decay_shape!r}")
        if self.warmup_steps + self.decay_steps > self.total_steps:
            raise ValueError("warmup_fraction + decay_fraction must be at most 1")

    @property
    def warmup_steps(self) -> int:
        if self.kept_warmup_steps is not None:
            return self.kept_warmup_steps
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
        return decay_factor(step - decay_start, d, self.min_lr_ratio, self.decay_shape)

    def lr(self, step: int) -> float:
        return self.peak_lr * self.factor(step)

    def state_dict(self) -> ScheduleState:
        """Plain values only (readable with torch.load(weights_only=True))."""
        state: ScheduleState = {k: v for k, v in asdict(self).items() if k != "kept_warmup_steps"}
        return state | {"warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: ScheduleState) -> None:
        """Keep the warmup the saved run began (a run shortened below it: what fits
        before the decay); budget, peak lr and decay stay this run's settings."""
        self.kept_warmup_steps = min(_saved_warmup(state), self.total_steps - self.decay_steps)


def decay_factor(i: int, decay_steps: int, min_lr_ratio: float, shape: DecayShape) -> float:
    """The multiplier at step `i` (0-based) of a decay of `decay_steps` steps from the peak
    to `min_lr_ratio`. The final decay of a run and every decay branch call this, so a
    branch and a run that ends there anneal through bitwise the same learning rates."""
    p = min(1.0, (i + 1) / decay_steps)
    if shape == "linear":
        s = 1.0 - p
    elif shape == "cosine":
        s = 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        s = 1.0 - math.sqrt(p)
    return min_lr_ratio + (1.0 - min_lr_ratio) * s


@dataclass
class StagedSchedule:
    """WSD over chronological stages: warmup (`warmup_steps`, fixed by the first stage
    alone), the peak through every stage's main steps (`main_steps` in all), then the last
    stage's decay (`decay_steps`). Every earlier stage ends with a decay branch of its own
    length (`branch_lr`), run off the main line (train/trainer.py). Nothing here depends on
    stages that come later than the step it is asked about."""

    peak_lr: float
    warmup_steps: int
    main_steps: int
    decay_steps: int
    min_lr_ratio: float = 0.1
    decay_shape: DecayShape = "linear"

    @property
    def total_steps(self) -> int:
        return self.main_steps + self.decay_steps

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step < self.main_steps:
            return 1.0
        return decay_factor(step - self.main_steps, self.decay_steps, self.min_lr_ratio,
                            self.decay_shape)

    def lr(self, step: int) -> float:
        return self.peak_lr * self.factor(step)

    def branch_lr(self, i: int, decay_steps: int) -> float:
        """Step `i` of a decay branch of `decay_steps` steps."""
        return self.peak_lr * decay_factor(i, decay_steps, self.min_lr_ratio, self.decay_shape)

    def state_dict(self) -> ScheduleState:
        return dict(asdict(self))

    def load_state_dict(self, state: ScheduleState) -> None:
        """Keep the warmup the saved run began (a staged run refuses a rerun that changes
        its stages' settings, so the rest is the saved run's already)."""
        self.warmup_steps = min(_saved_warmup(state), self.main_steps)


def stage_decay_steps(stage_steps: int, decay_fraction: float) -> int:
    """Steps of a stage's decay (branch or final): decay_fraction of its own steps, >= 1."""
    return max(1, int(decay_fraction * stage_steps + 0.5))


def budget_steps(
    cfg: TrainingConfig, train_windows: int, global_batch: int, tokens_per_step: int
) -> int:
    """Optimizer steps of a run: --max-steps, else --max-tokens worth, else one epoch
    of `train_windows` (the windows one epoch reads)."""
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    if cfg.max_tokens is not None:
        return max(1, math.ceil(cfg.max_tokens / tokens_per_step))
    return max(1, train_windows // global_batch)
