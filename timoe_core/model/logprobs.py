"""The mixture formula and the target-log-prob kernels (TiMoE's arithmetic).

`add_to_mixture` folds one expert's term log w_k + log P_k into the running logsumexp;
`target_log_probs` is an expert's log P(target) chunk by chunk of positions (with
autograd, or for a frozen expert into one reused buffer): the one target-log-prob kernel,
used by every path of `TiMoE` and by a single expert or dense model under evaluation, so
the numbers of training, evaluation and decoding come from one place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from timoe_core.model.gpt import GPT

# One chunk of vocab-sized log-probs (positions x vocab x 4 bytes) is about this big.
CHUNK_BYTES = 32 << 20
MIN_CHUNK_TOKENS = 64


def chunk_positions(vocab_size: int) -> int:
    """Positions per vocab projection: about CHUNK_BYTES of fp32 logits."""
    return max(MIN_CHUNK_TOKENS, CHUNK_BYTES // (4 * vocab_size))


def add_to_mixture(
    total: torch.Tensor | None,
    expert_log_probs: torch.Tensor,
    log_weight: torch.Tensor | None = None,
    *,
    experts_dim: int | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """The mixture formula: experts' terms folded into the running log-probability,

        total <- log( exp(total) + sum_k w_k * P_k )
               = logaddexp(total, logsumexp_k (log w_k + log P_k))

    so that folding every eligible expert in gives logsumexp_k (log w_k + log P_k).

    total None: nothing folded yet (the result is the terms' logsumexp).
    log_weight None: the caller applies the weights (uniform ones: log(1/n) once at the
        end, instead of once per expert).
    experts_dim: the terms hold several experts along this dim (the target-only path:
        (B, T, K)), folded at once; None: one expert's term.
    inplace: one expert's vocab-sized term is computed in `expert_log_probs` and the sum
        written into `total` (inference; no second vocab-sized tensor).
    """
    if log_weight is None:
        term = expert_log_probs
    elif inplace:
        term = expert_log_probs.add_(log_weight)
    else:
        term = expert_log_probs + log_weight
    if experts_dim is not None:
        term = torch.logsumexp(term, dim=experts_dim)
    if total is None:
        return term
    if inplace:
        return torch.logaddexp(total, term, out=total)
    return torch.logaddexp(total, term)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[0, n) cut into ceil(n / size) near-equal pieces (no small tail piece)."""
    pieces = max(1, -(-n // size))
    step = -(-n // pieces)
    return [(p, min(p + step, n)) for p in range(0, n, step)]


def _project(hidden: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """fp32 logits hidden @ weight.T, written into `out` when the dtypes allow it."""
    if (
        hidden.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled(hidden.device.type)
    ):
        return torch.mm(hidden, weight.t(), out=out)
    out.copy_(F.linear(hidden, weight).float())
    return out


def target_log_probs(
    expert: GPT, ids: torch.Tensor, targets: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """log P(targets[b, t] | ids[b, :t+1]) under one expert as fp32 (B, T), the vocab
    projection done `chunk` positions at a time (default `chunk_positions`), so no
    (B, T, vocab) tensor exists. Targets equal to -1 are ignored (their log-prob is 0)."""
    if chunk is None:
        chunk = chunk_positions(expert.config.vocab_size)
    h = expert.hidden_states(ids)
    B, T, C = h.shape
    flat_h, flat_t = h.reshape(-1, C), targets.reshape(-1)
    if not h.requires_grad:
        return _frozen_target_log_probs(expert, flat_h, flat_t, chunk).view(B, T)
    parts = []
    for p0, p1 in _chunks(flat_h.size(0), chunk):
        logits = expert.lm_head(flat_h[p0:p1]).float()
        parts.append(-F.cross_entropy(logits, flat_t[p0:p1], reduction="none", ignore_index=-1))
    return torch.cat(parts).view(B, T)


def _frozen_target_log_probs(
    expert: GPT, flat_h: torch.Tensor, flat_t: torch.Tensor, chunk: int
) -> torch.Tensor:
    """`target_log_probs` without autograd (a frozen expert): each chunk's logits go into
    one reused buffer, log-softmax in place, then the targets are gathered; about half
    the memory traffic of cross_entropy, which writes a second vocab-sized tensor."""
    out = torch.empty(flat_t.shape, dtype=torch.float32, device=flat_h.device)
    ignored = flat_t == -1
    picked = flat_t.clamp_min(0).unsqueeze(1)
    pieces = _chunks(flat_h.size(0), chunk)
    scratch = torch.empty(pieces[0][1] - pieces[0][0], expert.lm_head.weight.size(0),
                          dtype=torch.float32, device=flat_h.device)
    for p0, p1 in pieces:
        buf = _project(flat_h[p0:p1], expert.lm_head.weight, scratch[: p1 - p0])
        torch.log_softmax(buf, dim=-1, out=buf)
        torch.gather(buf, 1, picked[p0:p1], out=out[p0:p1].unsqueeze(1))
    return out.masked_fill_(ignored, 0.0)


def _runs(rows: list[int], status: list[bool]) -> list[tuple[int, int, int, bool]]:
    """Maximal runs of consecutive row indices with equal status.

    Returns (global_start, global_end, local_start, status) for `rows` (sorted).
    """
    out: list[tuple[int, int, int, bool]] = []
    for local, row in enumerate(rows):
        st = status[row]
        if out and out[-1][1] == row and out[-1][3] == st:
            g0, _, l0, _ = out[-1]
            out[-1] = (g0, row + 1, l0, st)
        else:
            out.append((row, row + 1, local, st))
    return out
