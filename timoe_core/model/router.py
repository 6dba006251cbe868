"""The TiMoE router: causal per-token weights over the time-slice experts.

At position t the router sees only tokens 1..t and the query date's eligibility mask:

    e_i      = Embedding(x_i)                         own small table (embed_dim)
    p_t      = (e_1 + ... + e_t) / t                  prefix (cumulative) mean: causal
    h_t      = GELU(W1 LayerNorm(p_t) + U m + b1)     m: the row's eligibility mask (0/1 per slot)
    z_t      = W2 h_t + b2                            one logit per expert slot
    log w_t  = log_softmax(z_t masked to the eligible slots)   (optionally top-k, renormalised)

Why its own embedding table rather than an expert's hidden states: the router stays
independent of the experts (coadapt changes them; causal validity never depends on
which expert produced the input) and costs one embedding lookup and a cumulative sum,
not a transformer forward. `init_embedding_from` seeds the table from an expert's token
embeddings (a fixed random projection), so training starts from meaningful token
vectors instead of noise. The output layer starts at zero: an untrained router gives
equal weights over the eligible experts, i.e. it *is* `avg`, and training moves away
from there.

Masking happens on the logits BEFORE the softmax: an ineligible slot gets log-weight
-inf (weight exactly 0) and takes no mass; it is excluded, never "zeroed" (a zero logit
would still take mass). The paper's code mean-pooled the whole sequence, letting later
tokens steer earlier predictions; the prefix mean cannot.

Incremental use (generation): the prefix mean only needs a running sum and a count,
kept in `RouterState`; feeding tokens in pieces gives the same weights as feeding them
at once.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import date

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field


@dataclass
class RouterSnapshot:
    """A router as trained on data up to `data_cutoff` (a stage of a staged router)."""

    data_cutoff: date
    router: "Router"

    @property
    def name(self) -> str:
        return f"router@{self.data_cutoff.isoformat()}"

    @property
    def slice_labels(self) -> list[str]:
        return self.router.config.slice_labels


class RouterConfig(BaseModel):
    """Shape of a router; saved in the bundle's timoe.json next to its weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slice_labels: list[str] = Field(max_length=10_000)  # one slot per expert, in time order
    # Bounded so that a hand-edited timoe.json is refused before anything is allocated.
    vocab_size: int = Field(ge=1, le=1 << 21)
    embed_dim: int = Field(64, ge=1, le=1 << 16)
    hidden_dim: int = Field(128, ge=1, le=1 << 16)
    date_features: bool = True  # feed the eligibility mask to the MLP

    @property
    def n_experts(self) -> int:
        return len(self.slice_labels)


@dataclass
class RouterState:
    """Prefix pooling carried between calls: running sum (B, embed_dim) and token count."""

    total: torch.Tensor
    count: int


@dataclass
class RouterOutput:
    log_weights: torch.Tensor  # (B, T, K) fp32; -inf for excluded slots; logsumexp_k = 0
    logits: torch.Tensor  # (B, T, K) raw logits before masking (for the z-loss)
    eligible: torch.Tensor  # (B, K) bool
    state: RouterState


@dataclass
class RouterAux:
    """Auxiliary losses (already weighted in `total`); the others are for logging."""

    total: torch.Tensor
    entropy: torch.Tensor  # mean per-token entropy of the weights (nats)
    balance: torch.Tensor  # Switch-style load balance, 1.0 = perfectly balanced
    z_loss: torch.Tensor  # mean squared logsumexp of the eligible logits


class Router(nn.Module):
    def __init__(self, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        k = config.n_experts
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.fc = nn.Linear(config.embed_dim, config.hidden_dim)
        self.date_proj = (
            nn.Linear(k, config.hidden_dim, bias=False) if config.date_features else None
        )
        self.out = nn.Linear(config.hidden_dim, k)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.fc.weight, std=1.0 / math.sqrt(config.embed_dim))
        nn.init.zeros_(self.fc.bias)
        if self.date_proj is not None:
            nn.init.normal_(self.date_proj.weight, std=1.0 / math.sqrt(k))
        # Zero output layer: an untrained router is exactly `avg` over the eligible experts.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def n_experts(self) -> int:
        return self.config.n_experts

    @torch.no_grad()
    def init_embedding_from(self, token_embeddings: torch.Tensor, seed: int = 0) -> None:
        """Seed the table from an expert's (vocab, n_embd) embeddings by a fixed projection."""
        table = token_embeddings.detach().float().to(self.embed.weight.device)
        n = min(table.size(0), self.embed.weight.size(0))
        gen = torch.Generator().manual_seed(seed)
        proj = torch.randn(table.size(1), self.config.embed_dim, generator=gen)
        proj = torch.linalg.qr(proj)[0] if table.size(1) >= self.config.embed_dim else proj
        seeded = table[:n] @ proj.to(table.device)
        seeded *= 0.02 / seeded.std().clamp_min(1e-12)  # keep the usual init scale
        self.embed.weight[:n] = seeded

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> RouterState:
        device = device if device is not None else self.embed.weight.device
        return RouterState(torch.zeros(batch_size, self.config.embed_dim, device=device), 0)

    def forward(
        self,
        input_ids: torch.Tensor,
        eligible: torch.Tensor,
        state: RouterState | None = None,
        top_k: int | None = None,
    ) -> RouterOutput:
        """Log-weights (B, T, K) for `input_ids` (B, T), masked to `eligible` (B, K).

        With `state`, `input_ids` continue the tokens already pooled in it.
        """
        B, T = input_ids.shape
        if eligible.shape != (B, self.n_experts):
            raise ValueError(
                f"eligibility mask of shape {tuple(eligible.shape)}, expected {(B, self.n_experts)}"
            )
        eligible = eligible.to(device=input_ids.device, dtype=torch.bool)
        if state is None:
            state = self.initial_state(B, input_ids.device)
        emb = self.embed(input_ids).float()  # (B, T, D)
        sums = torch.cumsum(emb, dim=1) + state.total.unsqueeze(1)
        counts = torch.arange(state.count + 1, state.count + T + 1, device=emb.device)
        pooled = sums / counts.to(emb.dtype).view(1, T, 1)
        h = self.fc(self.norm(pooled))
        if self.date_proj is not None:
            h = h + self.date_proj(eligible.to(h.dtype)).unsqueeze(1)
        logits = self.out(F.gelu(h)).float()  # (B, T, K)
        log_weights = masked_log_softmax(logits, eligible.unsqueeze(1).expand(B, T, -1), top_k)
        new_state = RouterState(sums[:, -1].detach() if T else state.total, state.count + T)
        return RouterOutput(log_weights, logits, eligible, new_state)

    def aux_losses(
        self,
        out: RouterOutput,
        entropy_coef: float = 0.01,
        balance_coef: float = 0.01,
        z_loss_coef: float = 1e-4,
        mask: torch.Tensor | None = None,
    ) -> RouterAux:
        """Entropy, load-balancing and z-loss over the eligible slots of `out`.

        entropy: mean per-token entropy of the weights; minimising it makes each token
            choose (it pairs with top-k).
        balance: K_e * sum_k f_k * P_k (Switch Transformer), f_k the share of tokens whose
            largest weight is expert k, P_k the mean weight of expert k, K_e the number of
            experts eligible somewhere in the batch; 1.0 when usage is even.
        z_loss: mean (logsumexp of the eligible logits)^2 keeps the logits small.
        mask: optional (B, T) bool of the positions that count (padding excluded).
        """
        lw = out.log_weights
        B, T, K = lw.shape
        if mask is None:
            valid = torch.ones(B, T, dtype=torch.bool, device=lw.device)
        else:
            valid = mask.bool()
        n_tok = valid.sum().clamp_min(1)
        w = lw.exp()
        # 0 * log 0 = 0, with a finite gradient (w * -inf would give NaN gradients).
        plogp = w * lw.masked_fill(torch.isneginf(lw), 0.0)
        entropy = -(plogp.sum(-1) * valid).sum() / n_tok

        wv = w * valid.unsqueeze(-1)
        mean_w = wv.sum((0, 1)) / n_tok  # P_k
        top = F.one_hot(lw.argmax(-1), K).to(w.dtype) * valid.unsqueeze(-1)
        frac = top.sum((0, 1)) / n_tok  # f_k (not differentiable, as in Switch)
        k_e = out.eligible.any(0).sum().clamp_min(1).to(w.dtype)
        balance = k_e * (frac * mean_w).sum()

        elig = out.eligible.unsqueeze(1).expand(B, T, K)
        lse = torch.logsumexp(out.logits.masked_fill(~elig, float("-inf")), dim=-1)
        z_loss = ((lse**2) * valid).sum() / n_tok

        total = entropy_coef * entropy + balance_coef * balance + z_loss_coef * z_loss
        return RouterAux(total=total, entropy=entropy, balance=balance, z_loss=z_loss)


def slot_generator(seed: int, label: str) -> torch.Generator:
    """A generator fixed by (seed, slot label) alone: a slot's initial weights never
    depend on how many other slots exist or will exist."""
    digest = hashlib.sha256(f"{seed}:{label}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@torch.no_grad()
def grow_router(router: Router, labels: list[str], seed: int) -> Router:
    """`router` with one slot per label of `labels` (a superset of its own slots, in time
    order). Kept slots keep their weights; a new slot starts with a zero output row and
    bias (equal weight, as an untrained router) and a date-feature column drawn from
    `slot_generator(seed, label)`. Nothing depends on slices that are not in `labels`."""
    old = router.config.slice_labels
    missing = [label for label in old if label not in labels]
    if missing:
        raise ValueError(f"grow_router would drop the slots {missing}")
    grown = Router(router.config.model_copy(update={"slice_labels": list(labels)}))
    grown.to(router.embed.weight.device)
    for name in ("embed", "norm", "fc"):
        getattr(grown, name).load_state_dict(getattr(router, name).state_dict())
    grown.out.weight.zero_()
    grown.out.bias.zero_()
    for k, label in enumerate(labels):
        if label in old:
            j = old.index(label)
            grown.out.weight[k] = router.out.weight[j]
            grown.out.bias[k] = router.out.bias[j]
            if grown.date_proj is not None and router.date_proj is not None:
                grown.date_proj.weight[:, k] = router.date_proj.weight[:, j]
        elif grown.date_proj is not None:
            column = torch.randn(grown.config.hidden_dim, generator=slot_generator(seed, label))
            grown.date_proj.weight[:, k] = column.to(grown.date_proj.weight.device) * 0.5
    return grown


def masked_log_softmax(
    logits: torch.Tensor, eligible: torch.Tensor, top_k: int | None = None
) -> torch.Tensor:
    """log_softmax over the eligible entries only (others -inf), optionally top-k of them.

    Every row must have at least one eligible entry. With top_k, entries outside the k
    largest eligible logits get -inf and the kept ones are renormalised.
    """
    neg_inf = float("-inf")
    masked = logits.masked_fill(~eligible, neg_inf)
    if top_k is not None and top_k < logits.size(-1):
        kth = masked.topk(top_k, dim=-1).values[..., -1:]
        masked = masked.masked_fill(masked < kth, neg_inf)
    return torch.log_softmax(masked, dim=-1)
