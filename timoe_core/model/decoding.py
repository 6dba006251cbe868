"""Decoding, apart from the models: the next token's log-probs of a single GPT or of a
TiMoE mixture, continued from their state (KV caches, the router's prefix sum).

Each decoding expert keeps one `KVCache` (model/kv_cache.py), preallocated and filled in
place; only the last position is projected onto the vocabulary. The mixture's step folds
the eligible experts' terms with the same `add_to_mixture` as training and evaluation.
Text generation (timoe_core.generate) drives these steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from timoe_core.model.gpt import GPT
from timoe_core.model.kv_cache import KVCache
from timoe_core.model.logprobs import add_to_mixture
from timoe_core.model.mixture import QueryDates, TiMoE
from timoe_core.model.router import RouterState


@dataclass
class MixtureState:
    """Incremental decoding state: KV cache per eligible expert and the router's prefix sum."""

    eligible: torch.Tensor  # (B, K) bool, fixed by the query dates
    caches: dict[str, KVCache] = field(default_factory=dict)
    router: RouterState | None = None
    length: int = 0  # tokens consumed so far


def expert_next_log_probs(model: GPT, ids: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """(B, V) fp32 log-probs of the token after `ids` under one GPT. With `cache`, `ids`
    holds only the new tokens (written into it); without, the whole context."""
    h = model.hidden_states(ids, kv_cache=cache)[:, -1]
    return torch.log_softmax(model.lm_head(h).float(), dim=-1)


@torch.no_grad()
def mixture_next_log_probs(
    mix: TiMoE,
    input_ids: torch.Tensor,
    query_dates: QueryDates | None = None,
    state: MixtureState | None = None,
) -> tuple[torch.Tensor, MixtureState]:
    """(B, V) log-probs of the token after `input_ids` under `mix`, and the state to go on.

    Without `state`, `input_ids` is the whole context (query_dates needed); with it,
    `input_ids` holds only the new tokens. Every eligible expert keeps a KV cache (top-k
    may silence an expert now and need it later); a state without an expert's cache gets
    one of the expert's block_size.
    """
    ids = input_ids.to(mix.device)
    B, T = ids.shape
    if state is None:
        if query_dates is None:
            raise ValueError("decoding starts from the query date(s): give query_dates")
        state = MixtureState(eligible=mix.eligibility(query_dates, B))
    lw, router_out = mix.log_weights(ids, state.eligible, state.router)
    lw = lw[:, -1]  # (B, K)

    def nothing_folded() -> torch.Tensor:
        return torch.full((B, mix.vocab_size), float("-inf"), device=mix.device)

    out = None  # the first expert's term starts the sum (no -inf tensor to fold into)
    for k, s in enumerate(mix.slices):
        rows = state.eligible[:, k]
        if not rows.any():
            continue
        every = bool(rows.all())
        expert = mix.expert(s)
        cache = state.caches.get(s.label)
        if cache is None:
            cache = state.caches[s.label] = expert.new_kv_cache(int(rows.sum()))
        lp = expert_next_log_probs(expert, ids if every else ids[rows], cache)
        if every:
            out = add_to_mixture(out, lp, lw[:, k].unsqueeze(1), inplace=True)
        else:
            if out is None:
                out = nothing_folded()
            out[rows] = add_to_mixture(out[rows], lp, lw[rows, k].unsqueeze(1), inplace=True)
    if out is None:  # no row has an eligible expert
        out = nothing_folded()
    return out, MixtureState(
        eligible=state.eligible,
        caches=state.caches,
        router=router_out.state if router_out is not None else None,
        length=state.length + T,
    )
