"""The GPT expert: a GPT-2 style decoder in one readable file (after nanoGPT).

Pre-LayerNorm blocks, GELU MLP, tied input/output embeddings, PyTorch's
scaled_dot_product_attention, and an optional KV cache (model/kv_cache.py) that decoding
(model/decoding.py) hands to `hidden_states`.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from timoe_core.model.kv_cache import KVCache, KVCacheLayer

GPT2_VOCAB_SIZE = 50257
PresetName = Literal["tiny", "small", "gpt2-124m"]


def pad_vocab(vocab_size: int, multiple: int = 64) -> int:
    """Pad the vocab so the output matmul has a friendly shape (50257 -> 50304)."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


# Upper bounds, checked before anything is allocated: a hand-edited run.json or a
# flag typo (`block_size: 10**12`) must be a clear error, not minutes of allocation.
MAX_VOCAB_SIZE = 1 << 21
MAX_BLOCK_SIZE = 1 << 17
MAX_N_LAYER = 1024
MAX_N_HEAD = 1024
MAX_N_EMBD = 1 << 16
MAX_PARAMETERS = 20_000_000_000  # 80 GB of fp32 weights


class GPTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    vocab_size: int = Field(pad_vocab(GPT2_VOCAB_SIZE), ge=1, le=MAX_VOCAB_SIZE)
    block_size: int = Field(1024, ge=2, le=MAX_BLOCK_SIZE)
    n_layer: int = Field(12, ge=1, le=MAX_N_LAYER)
    n_head: int = Field(12, ge=1, le=MAX_N_HEAD)
    n_embd: int = Field(768, ge=1, le=MAX_N_EMBD)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = True

    @model_validator(mode="after")
    def _heads_divide(self) -> "GPTConfig":
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}: "
                "choose n_embd as a multiple of n_head"
            )
        n = self.n_layer * 12 * self.n_embd**2 + (self.vocab_size + self.block_size) * self.n_embd
        if n > MAX_PARAMETERS:
            raise ValueError(
                f"a model of n_layer {self.n_layer}, n_embd {self.n_embd}, vocab_size "
                f"{self.vocab_size}, block_size {self.block_size} has about {n:.3g} "
                f"parameters, more than the {MAX_PARAMETERS:.0e} this toolkit allocates"
            )
        return self


PRESETS: dict[str, dict[str, int]] = {
    # CPU-sized: trains in seconds, enough to show time-dependent facts on the builtin corpus.
    "tiny": dict(n_layer=2, n_head=4, n_embd=128, block_size=128),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    # The paper's expert size.
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}


def preset_config(name: str, **overrides: object) -> GPTConfig:
    """A preset with any field overridden; None values leave the preset's value."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    fields: dict[str, object] = dict(PRESETS[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return GPTConfig.model_validate(fields)


class Linear(nn.Linear):
    """nn.Linear, with the weight's rows split across threads for a few input rows on CPU.

    A decoding step multiplies one row by every weight, so it is bound by reading the
    weights. MKL runs such a (1, in) x (in, out) product on one core, at a third of the
    memory's bandwidth on a 2-core AVX2 machine (14 vs 31-47 GB/s through the `small`
    preset's blocks); a batched product over slices of the output rows runs the slices
    on all threads. Same weight, same parameter names; only the kernel differs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = math.gcd(self.out_features, torch.get_num_threads())
        rows = x.numel() // self.in_features
        if parts == 1 or not x.is_cpu or not 1 <= rows <= FEW_ROWS:
            return F.linear(x, self.weight, self.bias)
        w = self.weight.view(parts, -1, self.in_features)
        xt = x.reshape(rows, -1).t().expand(parts, -1, -1)  # (parts, in, rows)
        if self.bias is None:
            y = torch.bmm(w, xt)
        else:
            y = torch.baddbmm(self.bias.view(parts, -1, 1), w, xt)  # (parts, out/parts, rows)
        return (y.view(-1, rows).t() if rows > 1 else y).view(*x.shape[:-1], -1)


FEW_ROWS = 4  # up to here the split product is faster (3x at 1 to 4 rows)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        past: KVCacheLayer | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        cached = 0
        if past is not None:
            cached = past.cache.length
            k, v = past.append(k, v)
        if cached == 0:
            mask, causal = None, True
        elif T == 1:
            mask, causal = None, False  # one new token attends to everything cached
        else:
            # With a cache and several new tokens, new query i sees all past keys plus new
            # keys up to i: an explicit bottom-right aligned causal mask.
            mask = torch.ones(T, cached + T, dtype=torch.bool, device=x.device).tril(cached)
            causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.dropout(self.proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.proj(F.gelu(self.fc(x))), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        past: KVCacheLayer | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), past)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, *, init_weights: bool = True) -> None:
        """`init_weights=False` leaves PyTorch's default initialisation, for a model whose
        weights are loaded next (GPT-2's initialisation of gpt2-124m takes 0.8 s on CPU:
        half of building it)."""
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied embeddings
        if not init_weights:
            return
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def new_kv_cache(self, batch_size: int = 1, capacity: int | None = None) -> KVCache:
        """An empty KV cache shaped for this model (its dtype and device) and `batch_size`
        rows, `capacity` positions (default block_size)."""
        c, w = self.config, self.lm_head.weight
        return KVCache(c.n_layer, batch_size, c.n_head, capacity or c.block_size,
                       c.n_embd // c.n_head, dtype=w.dtype, device=w.device)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, given targets, the mean cross-entropy.

        Targets equal to -1 are ignored. With `kv_cache` (filled in place), `idx` holds
        only the new tokens and positions continue the cache.
        """
        logits = self.logits(idx, kv_cache)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Final-layer-normed hidden states (B, T, n_embd).

        With `kv_cache` (filled in place), `idx` holds only the new tokens and positions
        continue the cache.
        """
        T = idx.size(1)
        past_len = kv_cache.length if kv_cache is not None else 0
        limit = self.config.block_size
        if kv_cache is not None:
            limit = min(limit, kv_cache.capacity)
        if past_len + T > limit:
            what = "block_size" if limit == self.config.block_size else "the cache's capacity"
            raise ValueError(f"sequence of {past_len + T} tokens exceeds {what} {limit}")
        if kv_cache is not None and T == 1 and not self.training:
            return self._decode_step(idx, kv_cache)
        pos = torch.arange(past_len, past_len + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, None if kv_cache is None else kv_cache.layer(i))
        if kv_cache is not None:
            kv_cache.length += T
        return self.ln_f(x)

    def _decode_step(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """`hidden_states` of one new position per row (B, 1) in eval mode: the blocks'
        math, written as one loop over the layers' weights. A decoding step is bound by
        reading the weights, and every operation between its products adds to it: this
        path skips the blocks' modules and views and calls the layers' `forward` directly
        (so module hooks do not run here): 5-10% of a step on CPU (small preset, 2 cores).
        Tests check it against the full forward."""
        B, pos = idx.size(0), cache.length
        C, H = self.config.n_embd, self.config.n_head
        x = self.wte.weight[idx] + self.wpe.weight[pos]
        for block, (keys, values) in zip(cast("list[Block]", self.blocks), cache.layers):
            attn, mlp = block.attn, block.mlp  # their layers' forward, called directly
            qkv = attn.qkv.forward(block.ln_1.forward(x)).view(B, 3, H, 1, C // H)
            q, k, v = qkv.unbind(1)
            keys[:, :, pos : pos + 1] = k
            values[:, :, pos : pos + 1] = v
            y = F.scaled_dot_product_attention(q, keys[:, :, : pos + 1], values[:, :, : pos + 1])
            x = x + attn.proj.forward(y.view(B, 1, C))  # (B, H, 1, D) is (B, 1, C) in memory
            x = x + mlp.proj.forward(F.gelu(mlp.fc.forward(block.ln_2.forward(x))))
        cache.length = pos + 1
        return self.ln_f.forward(x)

    def logits(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        return self.lm_head(self.hidden_states(idx, kv_cache))

    def log_probs(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Next-token log-probabilities (B, T, vocab) in fp32."""
        return F.log_softmax(self.logits(idx, kv_cache).float(), dim=-1)

    def flops_per_token(self) -> int:
        """Training FLOPs per token (6N + attention), as in the PaLM/nanoGPT MFU estimate."""
        c = self.config
        n = self.num_params()
        return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size
