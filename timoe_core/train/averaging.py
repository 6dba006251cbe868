"""A running average of the weights along the main line of a staged run: the `average`
snapshot kind (`--snapshot-kind average`), a snapshot at no extra training step.

Averaging the weights of a constant-learning-rate run comes close to what a cooldown
gives (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed
Training Durations"). The average is an exponential moving average whose horizon grows
with the run: after main step t (1-based) it moves toward the new weights by 1/h_t with
h_t = max(1, fraction x t), so it weighs roughly the last `fraction` of the steps so far,
as a decay of `--decay-fraction` anneals over the last share of a stage. Its state at
step t is a function of the main line's weights up to t alone: the snapshot at a stage
end reads nothing after that stage (the point-in-time rule), and the state is saved in
every trainer checkpoint (`state_dict`) so a resumed run averages bitwise as one that
was never stopped.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """The running average of `module`'s parameters (fp32, on the module's device)."""

    def __init__(self, module: nn.Module, fraction: float) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        # named_parameters() lists a tied weight once (lm_head is wte)
        self.names = [n for n, _ in module.named_parameters()]
        self.params = [p for _, p in module.named_parameters()]
        # None until the first update (whose weight is 1: the first weights themselves)
        self.average: list[torch.Tensor] | None = None
        self.updates = 0

    def weight(self, t: int) -> float:
        """How far the average moves toward the weights after main step t."""
        return 1.0 / max(1.0, self.fraction * t)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the current weights, those after main step `step` (1-based)."""
        current = [p.detach().float() for p in self.params]
        if self.average is None:
            self.average = [c.clone() for c in current]
        else:
            if self.average[0].device != current[0].device:  # loaded from a checkpoint
                self.average = [a.to(c.device) for a, c in zip(self.average, current)]
            torch._foreach_lerp_(self.average, current, self.weight(step))
        self.updates += 1

    def averaged_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """`module.state_dict()` with the averaged parameters in place of its own (buffers
        as they are; a tied name maps to the same average)."""
        assert self.average is not None, "no step averaged yet"
        by_tensor = {id(p): a for p, a in zip(self.params, self.average)}
        return {k: by_tensor.get(id(v), v) for k, v in _state_with_identity(module).items()}

    def state_dict(self) -> dict[str, object]:
        average = {} if self.average is None else {
            n: a.detach().cpu().clone() for n, a in zip(self.names, self.average)}
        return {"fraction": self.fraction, "updates": self.updates, "average": average}

    def load_state_dict(self, state: dict[str, object]) -> None:
        average, updates = state["average"], state["updates"]
        assert isinstance(average, dict) and isinstance(updates, int)
        assert set(average) == (set(self.names) if updates else set()), (
            "the averaged weights in the checkpoint do not match the model")
        self.average = [average[n].clone() for n in self.names] if updates else None
        self.updates = updates


def _state_with_identity(module: nn.Module) -> dict[str, torch.Tensor]:
    """module.state_dict(keep_vars=True): the parameters themselves (not detached
    copies), so they can be matched to their averages by identity."""
    return module.state_dict(keep_vars=True)
