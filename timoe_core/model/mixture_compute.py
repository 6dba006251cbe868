"""TiMoE's computations: the weights (uniform or the router's), the full distribution and
the target-only path of training and evaluation; each folds the eligible experts' terms
with `logprobs.add_to_mixture` (as decoding does, model/decoding.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from timoe_core.model.logprobs import (
    _chunks,
    _project,
    _runs,
    add_to_mixture,
    chunk_positions,
    target_log_probs,
)
from timoe_core.model.router import RouterAux, RouterOutput, RouterState
from timoe_core.model.weighting import get_strategy
from timoe_core.timeslices import TimeSlice

if TYPE_CHECKING:
    from datetime import date

    from timoe_core.config import MixtureOptions
    from timoe_core.model.expert_pool import ExpertRecord
    from timoe_core.model.gpt import GPT
    from timoe_core.model.mixture import QueryDates, TiMoE
    from timoe_core.model.router import Router

@dataclass
class MixtureOutput:
    """What `TiMoE.forward` returns; training losses need only `target_log_probs`."""

    target_log_probs: torch.Tensor  # (B, T) fp32 log P_mix(target)
    log_weights: torch.Tensor  # (B, T, K) fp32, -inf for excluded experts
    expert_log_probs: torch.Tensor  # (B, T, K) fp32 log P_k(target), -inf where not run
    eligible: torch.Tensor  # (B, K) bool
    router: RouterOutput | None = None
    router_aux: RouterAux | None = None


class MixtureComputation:
    """The computing part of `TiMoE` (a mixin: TiMoE holds the state)."""

    # TiMoE's state and views this part reads (declared for the type checker only).
    options: MixtureOptions
    router: Router | None
    slices: list[TimeSlice]
    device: torch.device
    chunk_tokens: int | None
    staged: bool
    _trainable: set[str]

    if TYPE_CHECKING:
        @property
        def strategy(self) -> str: ...

        @property
        def vocab_size(self) -> int: ...

        def eligibility(self, query_dates: QueryDates, batch_size: int) -> torch.Tensor: ...

        def expert(self, time_slice: TimeSlice | str) -> GPT: ...

        def _record(self, time_slice: TimeSlice | str) -> ExpertRecord: ...

        def _by_view(self, query_dates: QueryDates, batch_size: int
                     ) -> list[tuple[TiMoE, list[int], date]]: ...

    def _uses_router(self) -> bool:
        return get_strategy(self.strategy).uses_router

    def log_weights(
        self,
        input_ids: torch.Tensor,
        eligible: torch.Tensor,
        state: RouterState | None = None,
        router: nn.Module | None = None,
    ) -> tuple[torch.Tensor, RouterOutput | None]:
        """(B, T, K) log-weights (router) or (B, 1, K) (uniform); -inf for excluded experts.

        router: what to call instead of `self.router` (a trainer's DDP/compiled wrapper
        of it, so that gradients are synchronised)."""
        if self._uses_router():
            call = router if router is not None else self.router
            assert call is not None, "TiMoE gives a router strategy's mixture its router"
            out = call(input_ids, eligible, state=state, top_k=self.options.top_k)
            return out.log_weights, out
        n = eligible.sum(1, keepdim=True).to(torch.float32)
        lw = torch.where(eligible, -torch.log(n), torch.full_like(n, float("-inf")))
        return lw.unsqueeze(1), None

    def _chunk(self) -> int:
        """Positions per vocab projection: `chunk_tokens`, else `chunk_positions`."""
        return self.chunk_tokens or chunk_positions(self.vocab_size)

    # ------------------------------------------------------ full distributions

    @torch.no_grad()
    def mixture_log_probs(self, input_ids: torch.Tensor, query_dates: QueryDates) -> torch.Tensor:
        """(B, T, V) fp32 next-token log-probs of the mixture, as of the date(s).

        Streamed expert by expert into one output tensor (see the module docstring).
        Inference only (no gradients): training uses `forward`.
        """
        ids = input_ids.to(self.device)
        B, T = ids.shape
        if self.staged:
            return self._gather_views(ids, None, query_dates, lambda v, x, _, d:
                                      v.mixture_log_probs(x, d), (B, T, self.vocab_size))
        eligible = self.eligibility(query_dates, B)
        lw, _ = self.log_weights(ids, eligible)
        active = (eligible & torch.isfinite(lw).any(1)).cpu()  # top-k may drop an expert from a row
        # avg: equal weights, so add log(1/n) once at the end instead of once per expert.
        uniform = not self._uses_router()
        V = self.vocab_size
        out = torch.empty(B, T, V, dtype=torch.float32, device=self.device)
        written = [False] * B
        scratch: torch.Tensor | None = None
        for k, s in enumerate(self.slices):
            rows = active[:, k].nonzero().flatten().tolist()
            if not rows:
                continue
            expert = self.expert(s)
            h = expert.hidden_states(ids if len(rows) == B else ids[rows])  # (b_k, T, C)
            weight = expert.lm_head.weight
            for g0, g1, l0, accumulate in _runs(rows, written):
                dest = out[g0:g1].view(-1, V)
                hid = h[l0 : l0 + (g1 - g0)].reshape(-1, h.size(-1))
                a = None if uniform else lw[g0:g1, :, k].reshape(-1, 1)
                for p0, p1 in _chunks(dest.size(0), self._chunk()):
                    if accumulate:
                        if scratch is None or scratch.size(0) < p1 - p0:
                            # one chunk of logits, reused by every expert and chunk
                            scratch = torch.empty(p1 - p0, V, device=self.device)
                        buf = _project(hid[p0:p1], weight, scratch[: p1 - p0])
                    else:  # the row's first expert writes straight into the output
                        buf = _project(hid[p0:p1], weight, dest[p0:p1])
                    torch.log_softmax(buf, dim=-1, out=buf)  # in place, row by row
                    add_to_mixture(dest[p0:p1] if accumulate else None, buf,
                               None if a is None else a[p0:p1], inplace=True)
            for r in rows:
                written[r] = True
        if uniform:
            n = active.sum(1).tolist()
            for b in range(B):
                if n[b] > 1:
                    out[b].sub_(math.log(n[b]))
        return out

    # ----------------------------------------------------- target-only (training)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        query_dates: QueryDates,
        *,
        trainable: Iterable[TimeSlice | str] | None = None,
        cached_expert_log_probs: torch.Tensor | None = None,
        router: nn.Module | None = None,
    ) -> MixtureOutput:
        """Target-token log-probs of the mixture, (B, T), without any (B, T, V) mixture.

        trainable: experts run with gradients (default: `set_trainable_experts`); every
            other expert runs under no_grad. The router follows the global grad mode.
        cached_expert_log_probs: (B, T, K) log P_k(target) of frozen experts (from
            `experts_target_log_probs`, e.g. a disk cache); those experts are not run.
        router: the module computing the weights in place of `self.router` (a trainer's
            DDP/compiled wrapper of it).
        Targets equal to -1 are ignored (their log-prob is 0).
        """
        ids = input_ids.to(self.device)
        tgt = targets.to(self.device)
        B, T = ids.shape
        eligible = self.eligibility(query_dates, B)
        lw, router_out = self.log_weights(ids, eligible, router=router)
        lw = lw.expand(B, T, -1)
        active = eligible & torch.isfinite(lw).any(1)
        train_set = (
            self._trainable if trainable is None else {self._record(e).label for e in trainable}
        )
        elp = self._experts_target(ids, tgt, active, train_set, cached_expert_log_probs)
        tlp = add_to_mixture(None, elp, lw, experts_dim=-1)
        aux = None
        if router_out is not None and self.router is not None:
            o = self.options
            aux = self.router.aux_losses(
                router_out, o.entropy_coef, o.balance_coef, o.z_loss_coef, mask=tgt != -1
            )
        return MixtureOutput(tlp, lw, elp, eligible, router_out, aux)

    def mixture_target_log_probs(
        self, input_ids: torch.Tensor, targets: torch.Tensor, query_dates: QueryDates
    ) -> torch.Tensor:
        """log P_mix(targets[b, t] | input_ids[b, :t+1]) as (B, T) fp32."""
        if self.staged:
            return self._gather_views(input_ids, targets, query_dates, lambda v, x, y, d:
                                      v.forward(x, y, d).target_log_probs, tuple(targets.shape))
        return self.forward(input_ids, targets, query_dates).target_log_probs

    def _gather_views(self, ids: torch.Tensor, targets: torch.Tensor | None,
                      query_dates: QueryDates, run: Callable[..., torch.Tensor],
                      shape: tuple[int, ...]) -> torch.Tensor:
        """`run(view, ids, targets, date)` for each group of rows of one answering
        mixture, put back in row order."""
        groups = self._by_view(query_dates, ids.size(0))
        if len(groups) == 1:
            view, _, when = groups[0]
            return run(view, ids, targets, when)
        out = torch.empty(shape, dtype=torch.float32, device=self.device)
        for view, rows, when in groups:
            idx = torch.tensor(rows, device=ids.device)
            out[idx.to(self.device)] = run(view, ids[idx], None if targets is None
                                           else targets[idx], when)
        return out

    @torch.no_grad()
    def experts_target_log_probs(
        self, input_ids: torch.Tensor, targets: torch.Tensor, query_dates: QueryDates
    ) -> torch.Tensor:
        """(B, T, K) log P_k(target) of every eligible expert, -inf elsewhere (for caching)."""
        ids = input_ids.to(self.device)
        eligible = self.eligibility(query_dates, ids.size(0))
        return self._experts_target(ids, targets.to(self.device), eligible, set(), None)

    def _experts_target(
        self,
        ids: torch.Tensor,
        targets: torch.Tensor,
        active: torch.Tensor,
        trainable: set[str],
        cached: torch.Tensor | None,
    ) -> torch.Tensor:
        B, T = ids.shape
        cols = []
        for k, s in enumerate(self.slices):
            col = torch.full((B, T), float("-inf"), dtype=torch.float32, device=ids.device)
            rows = active[:, k]
            if rows.any():
                every = bool(rows.all())
                if cached is not None and s.label not in trainable:
                    vals = cached[..., k].to(device=ids.device, dtype=torch.float32)
                    col = torch.where(rows.unsqueeze(1), vals, col)
                else:
                    expert = self.expert(s)
                    grad = s.label in trainable and torch.is_grad_enabled()
                    with torch.set_grad_enabled(grad):
                        x = ids if every else ids[rows]
                        y = targets if every else targets[rows]
                        vals = target_log_probs(expert, x, y, self._chunk())
                    col = vals if every else col.index_put((rows.nonzero().flatten(),), vals)
            cols.append(col)
        return torch.stack(cols, dim=-1)
