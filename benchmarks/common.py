"""What every benchmark of the suite shares: the figure schema, interleaved timing
rounds, the CPU memory meter, random experts, and the JSON file.

A figure is `{"value", "unit", "ratio_to", "target", "goal"}`: `ratio_to` names the figure
it was measured against in the same run (its peer or limit), `target` is the bound from
the issues and `goal` says which side of it is good (">=", "<=" or "=="). Figures without
a target are context (the raw rates a ratio is made of, scaling series).

Timing: on a shared machine a figure is only as good as its peer's measurement taken
next to it. `interleaved_rounds` runs every side once per round, rotating the order from
round to round, after a warm-up; ratios are taken within a round (the sides ran back to
back, so load from other processes mostly cancels) and the median over rounds is
reported.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: the prepare-data child never needs it
    import torch

Figure = dict[str, Any]
Figures = dict[str, Figure]
GOALS = (">=", "<=", "==")


class Skipped(Exception):
    """A benchmark group that cannot run here (e.g. the GPU section without CUDA)."""


def figure(
    value: float,
    unit: str,
    ratio_to: str | None = None,
    target: float | None = None,
    goal: str | None = None,
) -> Figure:
    """One figure of the JSON schema (see the module docstring)."""
    if (target is None) != (goal is None) or (goal is not None and goal not in GOALS):
        raise ValueError(f"a target needs a goal among {GOALS} (got {target!r}, {goal!r})")
    return {"value": value, "unit": unit, "ratio_to": ratio_to, "target": target, "goal": goal}


def target_met(fig: Mapping[str, Any]) -> bool | None:
    """Whether the figure meets its target; None without a target (or without a value)."""
    target, value, goal = fig.get("target"), fig.get("value"), fig.get("goal")
    if target is None or value is None:
        return None
    if goal == ">=":
        return value >= target
    if goal == "<=":
        return value <= target
    if goal == "==":
        return abs(value - target) <= 1e-9 * max(1.0, abs(target))
    raise ValueError(f"unknown goal {goal!r}: use one of {GOALS}")


def sync(device: torch.device | str | None) -> None:
    """Wait for queued GPU work, so that wall-clock time covers it."""
    if device is None:
        return
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Measured:
    """What a side returns when it times itself (e.g. the work inside a child process,
    without the interpreter's start-up): `interleaved_rounds` records these seconds."""

    seconds: float


@dataclass
class Rounds:
    """Seconds of each side, one entry per round (the sides of a round ran back to back)."""

    seconds: dict[str, list[float]]

    def median(self, side: str) -> float:
        return statistics.median(self.seconds[side])

    def median_ratio(self, num: str, den: str) -> float:
        """Median over rounds of seconds[num] / seconds[den] within each round."""
        return statistics.median(a / b for a, b in zip(self.seconds[num], self.seconds[den]))

    def rates(self, side: str, work: float) -> list[float]:
        """work / seconds of every round (e.g. tokens/s)."""
        return [work / s for s in self.seconds[side]]


def interleaved_rounds(
    sides: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | str | None = None,
) -> Rounds:
    """Time every side `repeats` times, once per round, the order rotated each round;
    `warmup` untimed calls of each side first (allocator, caches, lazy loading). A side
    that returns `Measured` is recorded with its own seconds."""
    names = list(sides)
    for name in names:
        for _ in range(warmup):
            sides[name]()
    sync(device)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            result = sides[name]()
            sync(device)
            took = time.perf_counter() - t0
            seconds[name].append(result.seconds if isinstance(result, Measured) else took)
    return Rounds(seconds)


def fmt_runs(values: Iterable[float], scale: float = 1.0, digits: int = 1) -> str:
    """'1.2, 1.3, 1.1': every round of a figure, for the printed log."""
    return ", ".join(f"{v * scale:,.{digits}f}" for v in values)


def peak_allocated_bytes(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(peak bytes of tensors allocated by `fn` and alive at once, fn's result).

    Replays the allocation/free events the PyTorch profiler records (profile_memory),
    in time order, from zero at the start of the call: it counts exactly the tensors the
    code makes, on CPU, where the allocator keeps no statistics. Tensors alive before
    the call (weights, inputs) are not counted; the returned result is.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    alloc = torch._C._profiler._EventType.Allocation
    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == alloc:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    events.sort()
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak, result


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Peak bytes `fn` allocates: the CUDA allocator's own peak on a GPU (the profiler's
    event replay costs too much at gpt2-124m sizes), the event replay on CPU."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return peak_allocated_bytes(fn)[0]
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - start


def make_experts(
    root: Path, preset: str, labels: Iterable[str] | None = None, **overrides: Any
) -> list[Path]:
    """Random experts of a model preset, one run dir per slice label (default: the six
    default slices) under `root`. Speed does not depend on what an expert learned."""
    from tests.helpers import make_expert_runs  # the one writer of expert run dirs
    from timoe_core.model.gpt import preset_config

    cfg = preset_config(preset, **overrides)
    runs = make_expert_runs(
        root,
        labels,
        vocab_size=cfg.vocab_size,
        block_size=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        scale=0.02,
    )
    return list(runs.values())


def write_json(path: Path, figures: Mapping[str, Any]) -> None:
    """The figures (and the `_run` record, when present) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
