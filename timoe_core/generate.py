"""Sampling from a TiMoE mixture (as of a query date) or from a single GPT run dir.

Decoding (model/decoding.py) keeps a KV cache per eligible expert (a `KVCache`,
preallocated once per generation and filled in place) and the router's running prefix
sum (`mixture_next_log_probs`), so each new token costs one position per expert instead of
the whole context; `use_cache=False` recomputes the context every token (the reference
the cache is checked against, and the baseline of benchmarks/generate.py).

Context longer than block_size: the model sees a window of the most recent tokens.
When the window would exceed block_size it is cut back to the last block_size // 2
tokens and the caches (and the router's prefix pooling) are rebuilt from that window;
a prompt longer than block_size starts as its last block_size tokens. Cutting by half
rather than by one token keeps the cache useful (a one-token slide would shift every
position and force a full recomputation each step). The cached and uncached paths use
the same windows, so they produce the same tokens.

An empty prompt starts from the end-of-text token, as GPT-2 does. Generation stops at
the end-of-text token (not included in the output) or after max_new_tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from timoe_core.errors import TimoeError
from timoe_core.model.decoding import MixtureState, expert_next_log_probs, mixture_next_log_probs
from timoe_core.model.gpt import GPT
from timoe_core.model.kv_cache import KVCache
from timoe_core.model.mixture import QueryDate, TiMoE

StopReason = Literal["eot", "max_new_tokens"]


@dataclass
class GenerationResult:
    prompt_tokens: list[int]
    tokens: list[int]  # the new tokens, end-of-text excluded
    stop_reason: StopReason
    experts: list[str]  # labels of the experts that took part
    seconds: float
    window_rebuilds: int  # times the context was cut back to fit block_size
    first_token_seconds: float = 0.0  # the prompt's forward pass and the first token

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first per second of decoding (the prompt's pass excluded)."""
        t = self.seconds - self.first_token_seconds
        return (len(self.tokens) - 1) / t if len(self.tokens) > 1 and t > 0 else float("nan")


def sample_token(
    log_probs: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    vocab_limit: int | None = None,
) -> int:
    """One token id from (V,) log-probs: argmax when greedy or temperature 0.

    Ids at or above `vocab_limit` are never drawn: the embedding is padded past the
    tokenizer's vocabulary (50257 -> 50304 for GPT-2) and the tokenizer cannot decode
    those ids. Cutting them off renormalises the draw over the tokenizer's tokens.
    """
    if vocab_limit is not None and vocab_limit < log_probs.size(-1):
        log_probs = log_probs[:vocab_limit]
    if greedy or temperature == 0.0:
        return int(torch.argmax(log_probs))
    scores = log_probs.float() / temperature
    if top_k is not None and top_k < scores.numel():
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = F.softmax(scores, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


# A step: (token ids (1, n), state or None, use_cache) -> ((V,) next-token log-probs, state).
# With a state the ids are only the new tokens; without, the whole window. use_cache=False
# returns no state, so the next step recomputes the window.
DecodeState = MixtureState | KVCache
Step = Callable[[torch.Tensor, DecodeState | None, bool], tuple[torch.Tensor, DecodeState | None]]


# With the cache, every expert decodes into a `KVCache` of block_size positions,
# made at the first step and emptied whenever a window starts (after a cut): a step
# writes its new keys and values in place instead of re-concatenating them.


def _mixture_step(model: TiMoE, query_date: QueryDate, experts: list[str]) -> Step:
    caches: dict[str, KVCache] = {}

    def step(ids: torch.Tensor, state: DecodeState | None, use_cache: bool
             ) -> tuple[torch.Tensor, DecodeState | None]:
        assert state is None or isinstance(state, MixtureState)
        if state is None and use_cache:
            for label in experts:  # made once, emptied when a window starts again
                cache = caches.get(label) or model.expert(label).new_kv_cache()
                cache.reset()
                caches[label] = cache
            state = MixtureState(eligible=model.eligibility(query_date, 1), caches=dict(caches))
        lp, new_state = mixture_next_log_probs(model, ids, query_date, state)
        return lp[0], new_state if use_cache else None

    return step


def _gpt_step(model: GPT) -> Step:
    made: list[KVCache] = []

    def step(ids: torch.Tensor, state: DecodeState | None, use_cache: bool
             ) -> tuple[torch.Tensor, DecodeState | None]:
        assert state is None or isinstance(state, KVCache)
        cache = state
        if use_cache and cache is None:
            made[:] = made or [model.new_kv_cache()]
            cache = made[0]
            cache.reset()
        return expert_next_log_probs(model, ids, cache)[0], cache

    return step


def generate_tokens(
    model: TiMoE | GPT,
    prompt_tokens: list[int],
    *,
    query_date: QueryDate | None = None,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    seed: int = 0,
    eot_token: int | None = None,
    use_cache: bool = True,
    tokenizer_vocab_size: int | None = None,
) -> GenerationResult:
    """Sample up to `max_new_tokens` tokens after `prompt_tokens` (see the module docstring).

    A TiMoE needs `query_date`; a single GPT ignores it. `tokenizer_vocab_size`: ids at
    or above it (the embedding's padding) are never generated; default: the mixture's
    recorded tokenizer size, else no limit.
    """
    if isinstance(model, TiMoE):
        if query_date is None:
            raise TimoeError("a TiMoE mixture needs --query-date: generation is as of a date")
        model = model.as_of(query_date)  # exactly the artefacts usable then (exit 2 if none)
        experts = [s.label for s in model.eligible_experts(query_date)]
        block_size = min(model.run_infos[label].model_config_.block_size for label in experts)
        vocab_size = model.vocab_size
        device = model.device
        if tokenizer_vocab_size is None:
            tokenizer_vocab_size = model.tokenizer.get("vocab_size")
    else:
        experts = []
        block_size = model.config.block_size
        vocab_size = model.config.vocab_size
        device = next(model.parameters()).device

    tokens = list(prompt_tokens)
    if not tokens:
        if eot_token is None:
            raise TimoeError("the prompt is empty and there is no end-of-text token to start from")
        tokens = [eot_token]
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise TimoeError(f"prompt token {bad[0]} is outside the model's vocabulary of {vocab_size}")
    # after the checks: bad input loads no expert
    if isinstance(model, TiMoE):
        assert query_date is not None  # refused above
        step = _mixture_step(model, query_date, experts)
    else:
        step = _gpt_step(model)
    keep = max(1, block_size // 2)
    start = max(0, len(tokens) - block_size)  # first token of the window
    generator = torch.Generator().manual_seed(seed)

    state: DecodeState | None = None
    fed = start  # tokens[start:fed] are in the caches
    new: list[int] = []
    rebuilds = 0
    first_token_seconds = 0.0
    stop: StopReason = "max_new_tokens"
    began = time.perf_counter()
    # inference_mode: lighter per operation than no_grad, and a step runs hundreds of them
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            if len(tokens) - start > block_size:
                start, state, fed = len(tokens) - keep, None, len(tokens) - keep
                rebuilds += 1
            if state is None:
                fed = start
            ids = torch.tensor([tokens[fed:]], dtype=torch.long, device=device)
            log_probs, state = step(ids, state, use_cache)
            fed = len(tokens)
            token = sample_token(
                log_probs, temperature=temperature, top_k=top_k, greedy=greedy, generator=generator,
                vocab_limit=tokenizer_vocab_size,
            )
            if not new:
                first_token_seconds = time.perf_counter() - began
            if eot_token is not None and token == eot_token:
                stop = "eot"
                break
            tokens.append(token)
            new.append(token)
    seconds = time.perf_counter() - began
    return GenerationResult(list(prompt_tokens), new, stop, experts, seconds, rebuilds,
                            first_token_seconds)
