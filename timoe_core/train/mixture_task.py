"""`MixtureTask`: the training task every mixture recipe extends (learned-avg, coadapt, a
plugin's): windows of every trained year, each with its year as query date; the loss
from target-token log-probs only, plus the router's auxiliary losses."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from timoe_core.data.windows import TokenWindows
from timoe_core.model.mixture import MixtureOutput, TiMoE
from timoe_core.train.task import BatchT, TrainTask

# A held-out batch: inputs, targets, each row's year (its query date).
EvalBatch = tuple[torch.Tensor, torch.Tensor, list[int]]


class MixtureTask(TrainTask[BatchT, EvalBatch]):
    """What both mixture tasks share: windows of every trained year, each with its year
    as query date; loss = -mean log P_mix(target) + the router's auxiliary losses, from
    target-token log-probs only (`TiMoE.forward`: no (B, T, V) mixture is built)."""

    mix: TiMoE

    def __init__(
        self, mix: TiMoE, train: TokenWindows, val: TokenWindows | None, eval_windows: int
    ) -> None:
        self.mix = mix
        self.train = train
        self.val = val
        self.tokens_per_window = train.seq_len
        self._eval_windows = eval_windows

    @staticmethod
    def _to_device(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        if device.type == "cuda":
            return rows.pin_memory().to(device, non_blocking=True)
        return rows

    def mixture(self, model: torch.nn.Module) -> Callable[..., MixtureOutput]:
        """The mixture's forward for `model`, the trained module as the loop wrapped it
        (DDP and/or compile): the wrapper is called, never stored in `self.mix`."""
        raise NotImplementedError

    def mixture_loss(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        years: list[int],
        *,
        trainable: list[str] | None = None,
        cached_expert_log_probs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`trainable`: the experts run with gradients (coadapt's active one; None: the
        mixture's trainable experts); `cached_expert_log_probs`: the frozen experts'
        target log-probs from the log-prob cache (learned-avg)."""
        out = self.mixture(model)(x, y, years, trainable=trainable,
                                  cached_expert_log_probs=cached_expert_log_probs)
        nll = -out.target_log_probs.mean()
        aux = out.router_aux
        if aux is None:  # a weighting without a router (uniform): nothing to add
            return nll, {"nll": nll.detach()}
        metrics = {
            "nll": nll.detach(),
            "router_entropy": aux.entropy.detach(),
            "router_balance": aux.balance.detach(),
            "router_z_loss": aux.z_loss.detach(),
        }
        return nll + aux.total, metrics

    def eval_indices(self) -> np.ndarray | None:
        """Up to eval_windows validation windows spread evenly over the years."""
        if self.val is None or len(self.val) == 0:
            return None
        n = min(len(self.val), self._eval_windows)
        return np.unique(np.linspace(0, len(self.val) - 1, n).round().astype(np.int64))

    def eval_batch(self, indices: np.ndarray, device: torch.device) -> EvalBatch:
        assert self.val is not None
        rows, years = self.val.batch(indices)
        rows = self._to_device(rows, device)
        return rows[:, :-1], rows[:, 1:], years.tolist()

    def eval_loss(self, model: torch.nn.Module, batch: EvalBatch) -> torch.Tensor:
        """The mixture's held-out NLL (no auxiliary losses: comparable with avg's)."""
        x, y, years = batch
        return -self.mixture(model)(x, y, years).target_log_probs.mean()
