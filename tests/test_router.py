"""The router: causal, masked before the softmax, top-k, incremental, auxiliary losses."""

from __future__ import annotations

import math

import pytest
import torch

from timoe_core.model.router import Router, RouterConfig, masked_log_softmax

pytestmark = pytest.mark.filterwarnings("error")

K, V = 6, 97
LABELS = ["2013-2014", "2015-2016", "2017-2018", "2019-2020", "2021-2022", "2023-2024"]


def make_router(seed: int = 0, **kw) -> Router:
    torch.manual_seed(seed)
    r = Router(RouterConfig(slice_labels=LABELS, vocab_size=V, embed_dim=16, hidden_dim=32, **kw))
    with torch.no_grad():
        for p in r.parameters():
            p.normal_(0, 0.5)
    return r


def mask(*rows: int) -> torch.Tensor:
    """Eligibility rows: n -> the first n slots eligible."""
    return torch.tensor([[k < n for k in range(K)] for n in rows])


@pytest.fixture
def ids():
    return torch.randint(0, V, (3, 15), generator=torch.Generator().manual_seed(0))


def test_weights_are_masked_before_the_softmax(ids):
    out = make_router()(ids, mask(1, 3, 6))
    lw = out.log_weights
    assert lw.shape == (3, 15, K)
    assert torch.allclose(lw.logsumexp(-1), torch.zeros(3, 15), atol=1e-6)
    assert torch.equal(lw[0, :, 0], torch.zeros(15))  # one eligible expert: weight 1
    assert torch.isneginf(lw[0, :, 1:]).all() and torch.isneginf(lw[1, :, 3:]).all()
    assert torch.isfinite(lw[2]).all()


def test_position_t_depends_only_on_tokens_up_to_t(ids):
    r = make_router()
    m = mask(2, 4, 6)
    ref = r(ids, m).log_weights
    for t in range(ids.size(1) - 1):
        changed = ids.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] * 7 + 3) % V
        lw = r(changed, m).log_weights
        assert torch.equal(lw[:, : t + 1], ref[:, : t + 1])
    assert not torch.equal(r(changed, m).log_weights[:, -1], ref[:, -1])


def test_incremental_state_gives_the_same_weights(ids):
    r = make_router()
    m = mask(3, 5, 6)
    full = r(ids, m).log_weights
    state, parts = None, []
    for a, b in ((0, 4), (4, 5), (5, 11), (11, 15)):
        out = r(ids[:, a:b], m, state=state)
        parts.append(out.log_weights)
        state = out.state
    assert state.count == 15
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_untrained_router_is_uniform_over_the_eligible():
    r = Router(RouterConfig(slice_labels=LABELS, vocab_size=V))
    lw = r(torch.randint(0, V, (2, 5)), mask(2, 5)).log_weights
    assert torch.allclose(lw[0, :, :2], torch.full((5, 2), -math.log(2)))
    assert torch.allclose(lw[1, :, :5], torch.full((5, 5), -math.log(5)))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_keeps_k_and_renormalises(ids, k):
    r = make_router()
    m = mask(1, 3, 6)
    out = r(ids, m, top_k=k)
    finite = torch.isfinite(out.log_weights).sum(-1)
    assert (finite[0] == 1).all()  # fewer eligible than k: all of them
    assert (finite[1] == min(k, 3)).all() and (finite[2] == k).all()
    assert torch.allclose(out.log_weights.logsumexp(-1), torch.zeros(3, 15), atol=1e-6)
    # The kept experts are the k largest eligible logits, in the same proportions.
    dense = r(ids, m).log_weights
    top = dense[2].topk(k, -1).indices
    kept = out.log_weights[2].gather(-1, top)
    assert torch.allclose(kept, dense[2].gather(-1, top).log_softmax(-1), atol=1e-5)


def test_masked_log_softmax_excludes_instead_of_zeroing():
    logits = torch.tensor([[0.0, 5.0, 1.0]])
    lw = masked_log_softmax(logits, torch.tensor([[True, False, True]]))
    assert torch.isneginf(lw[0, 1])
    assert torch.allclose(lw[0, [0, 2]].exp(), torch.tensor([0.0, 1.0]).softmax(0))


def test_date_features_let_the_mask_change_the_weights(ids):
    r = make_router(date_features=True)
    a = r(ids[:1], mask(4)).log_weights[0, :, :2]
    b = r(ids[:1], mask(6)).log_weights[0, :, :2]
    # Same text, more experts available: not just a renormalisation of the same logits.
    assert not torch.allclose(a - a.logsumexp(-1, keepdim=True), b - b.logsumexp(-1, keepdim=True))
    plain = make_router(date_features=False)
    a = plain(ids[:1], mask(4)).log_weights[0, :, :2]
    b = plain(ids[:1], mask(6)).log_weights[0, :, :2]
    assert torch.allclose(a - a.logsumexp(-1, keepdim=True), b - b.logsumexp(-1, keepdim=True),
                          atol=1e-6)


def test_aux_losses_values_and_gradients(ids):
    uniform = Router(RouterConfig(slice_labels=LABELS, vocab_size=V))
    aux = uniform.aux_losses(uniform(ids, mask(4, 4, 4)), 1.0, 1.0, 1.0)
    assert aux.entropy.item() == pytest.approx(math.log(4), abs=1e-5)
    assert aux.balance.item() == pytest.approx(1.0, abs=1e-5)  # even usage
    assert aux.z_loss.item() == pytest.approx(math.log(4) ** 2, abs=1e-4)  # zero logits

    r = make_router()
    out = r(ids, mask(2, 4, 6))
    valid = torch.ones(3, 15, dtype=torch.bool)
    valid[:, -3:] = False
    aux = r.aux_losses(out, 0.01, 0.01, 1e-4, mask=valid)
    assert torch.isfinite(aux.total)
    assert torch.allclose(aux.total, 0.01 * aux.entropy + 0.01 * aux.balance + 1e-4 * aux.z_loss)
    aux.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in r.parameters())


def test_embedding_seeded_from_an_expert_table():
    r = Router(RouterConfig(slice_labels=LABELS, vocab_size=V, embed_dim=8))
    table = torch.randn(V, 32)
    r.init_embedding_from(table)
    w = r.embed.weight
    assert w.std().item() == pytest.approx(0.02, rel=1e-3)
    # A projection of the table: tokens close in the expert's space stay close.
    table[1] = table[0] + 1e-3
    r.init_embedding_from(table)
    d01 = (r.embed.weight[0] - r.embed.weight[1]).norm()
    d02 = (r.embed.weight[0] - r.embed.weight[2]).norm()
    assert d01 < 0.1 * d02


def test_grown_router_keeps_its_slots_and_new_ones_know_only_their_label():
    from timoe_core.model.router import grow_router

    torch.manual_seed(0)
    small = Router(RouterConfig(slice_labels=["2013-2014"], vocab_size=50, embed_dim=8,
                                hidden_dim=16))
    with torch.no_grad():
        small.out.weight.normal_()
        small.out.bias.normal_()
    two = grow_router(small, ["2013-2014", "2015-2016"], seed=7)
    three = grow_router(two, ["2013-2014", "2015-2016", "2017-2018"], seed=7)
    assert torch.equal(three.out.weight[0], small.out.weight[0])
    assert torch.equal(three.date_proj.weight[:, :2], two.date_proj.weight)
    # A new slot starts at zero output (equal weight to an untrained one) and its
    # date-feature column is the same whichever other slots exist.
    assert torch.count_nonzero(three.out.weight[1:]) == 0
    direct = grow_router(small, ["2013-2014", "2017-2018"], seed=7)
    assert torch.equal(direct.date_proj.weight[:, 1], three.date_proj.weight[:, 2])
    assert not torch.equal(grow_router(small, ["2013-2014", "2017-2018"], seed=8)
                           .date_proj.weight[:, 1], direct.date_proj.weight[:, 1])
    with pytest.raises(ValueError, match="drop"):
        grow_router(three, ["2013-2014"], seed=7)
