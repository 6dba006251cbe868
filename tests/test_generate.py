"""Generation: KV-cache decoding equals full recomputation; `timoe generate` end to end."""

from __future__ import annotations

import pytest
import torch
from helpers import GPT2_EOT, invoke_cli, make_expert_runs

from timoe_core.config import MixtureOptions
from timoe_core.errors import TimoeError
from timoe_core.generate import generate_tokens, sample_token
from timoe_core.model.decoding import mixture_next_log_probs
from timoe_core.model.gpt import FEW_ROWS, GPT, Linear
from timoe_core.model.mixture import TiMoE
from timoe_core.model.weights import load_expert

pytestmark = pytest.mark.filterwarnings("error")

V = 128
BLOCK = 32


@pytest.fixture
def runs(tmp_path):
    return make_expert_runs(tmp_path / "runs", vocab_size=V, block_size=BLOCK, scale=0.4)


def mixture(tmp_path, strategy="avg", top_k=None) -> TiMoE:
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], strategy=strategy,
                                 options=MixtureOptions(policy="inclusive", top_k=top_k))
    if mix.router is not None:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in mix.router.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return mix


def prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("strategy,top_k", [("avg", None), ("learned-avg", None),
                                            ("learned-avg", 2)])
@pytest.mark.parametrize("n_prompt", [5, 40])  # 40 > block_size: cropped from the start
@pytest.mark.parametrize("greedy", [True, False])  # sampled: same seed, same draws
def test_kv_cache_greedy_equals_full_recomputation_mixture(tmp_path, runs, strategy, top_k,
                                                           n_prompt, greedy):
    mix = mixture(tmp_path, strategy, top_k)
    kw = dict(query_date="2020", max_new_tokens=70, greedy=greedy, seed=7)  # crosses block_size
    cached = generate_tokens(mix, prompt(n_prompt), use_cache=True, **kw)
    full = generate_tokens(mix, prompt(n_prompt), use_cache=False, **kw)
    assert len(cached.tokens) == 70 and cached.stop_reason == "max_new_tokens"
    assert cached.tokens == full.tokens
    assert cached.window_rebuilds == full.window_rebuilds >= 2
    assert cached.experts == ["2013-2014", "2015-2016", "2017-2018", "2019-2020"]
    assert mix.loaded_experts() == cached.experts  # later experts never loaded
    if not greedy:
        assert len(set(cached.tokens)) > 20  # many different contexts were compared


def test_kv_cache_greedy_equals_full_recomputation_single_expert(runs):
    gpt, _ = load_expert(runs["2017-2018"])
    cached = generate_tokens(gpt, prompt(7), max_new_tokens=60, greedy=True, use_cache=True)
    full = generate_tokens(gpt, prompt(7), max_new_tokens=60, greedy=True, use_cache=False)
    assert cached.tokens == full.tokens and len(cached.tokens) == 60
    assert cached.experts == []


@pytest.mark.parametrize("strategy", ["avg", "learned-avg"])
def test_incremental_log_probs_equal_the_full_mixture(tmp_path, runs, strategy):
    mix = mixture(tmp_path, strategy)
    x = torch.randint(0, V, (2, 12))
    dates = ["2016", "2024"]
    lp, state = mixture_next_log_probs(mix, x[:, :5], dates)
    assert torch.allclose(lp, mix.mixture_log_probs(x[:, :5], dates)[:, -1], atol=1e-5)
    for t in range(5, 12):
        lp, state = mixture_next_log_probs(mix, x[:, t : t + 1], state=state)
        full = mix.mixture_log_probs(x[:, : t + 1], dates)[:, -1]
        assert torch.allclose(lp, full, atol=1e-5)
    assert state.length == 12 and set(state.caches) == {s.label for s in mix.slices}


def test_static_kv_cache_gives_the_full_forward_and_refuses_overflow(runs):
    gpt, _ = load_expert(runs["2017-2018"])
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(1))
    full = gpt.log_probs(x)
    cache = gpt.new_kv_cache(batch_size=2, capacity=20)
    pieces = [(0, 6), (6, 7), (7, 15), (15, 16), (16, 20)]  # prompt, one token, chunks
    for a, b in pieces:
        lp = torch.log_softmax(gpt.lm_head(gpt.hidden_states(x[:, a:b], kv_cache=cache)), -1)
        assert torch.allclose(lp, full[:, a:b], atol=1e-5), (a, b)
    assert cache.length == 20
    with pytest.raises(ValueError, match="exceeds the cache's capacity 20"):
        gpt.hidden_states(x[:, :1], kv_cache=cache)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out_features", [1152, 7])  # 7: no split across 2 threads
@pytest.mark.parametrize("shape", [(48,), (1, 48), (1, 1, 48), (2, 1, 48), (1, 3, 48),
                                   (FEW_ROWS, 48), (FEW_ROWS + 1, 48), (3, 4, 48), (0, 48)])
def test_linear_split_product_equals_f_linear(bias, out_features, shape):
    torch.manual_seed(0)
    layer = Linear(48, out_features, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    ref_x = x.detach().clone().requires_grad_(True)
    y, ref = layer(x), torch.nn.functional.linear(ref_x, layer.weight, layer.bias)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, atol=1e-5, rtol=1e-5)
    grad_w = torch.autograd.grad(y.square().sum(), (x, layer.weight))
    ref_grad = torch.autograd.grad(ref.square().sum(), (ref_x, layer.weight))
    for g, r in zip(grad_w, ref_grad):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4)


def test_linear_splits_few_rows_across_threads(monkeypatch):
    """A decoding step's rows go through one batched product over slices of the weight
    (one slice per thread); more rows than FEW_ROWS, and other devices, use F.linear."""
    layer = Linear(16, 24, bias=False)
    calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda w, x: calls.append(tuple(w.shape)) or real_bmm(w, x))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        layer(torch.randn(1, 16))
        layer(torch.randn(FEW_ROWS + 1, 16))
        torch.set_num_threads(3)
        layer(torch.randn(2, 16))
    finally:
        torch.set_num_threads(old)
    assert calls == [(2, 12, 16), (3, 8, 16)]


def test_gpt_without_init_loads_into_the_same_tied_model(runs):
    gpt, info = load_expert(runs["2017-2018"])
    bare = GPT(info.model_config_, init_weights=False)
    assert bare.lm_head.weight is bare.wte.weight
    assert sum(p.numel() for p in bare.parameters()) == sum(p.numel() for p in gpt.parameters())
    bare.load_state_dict(gpt.state_dict())
    x = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(3))
    assert torch.equal(bare.eval().log_probs(x), gpt.log_probs(x))


def test_padding_ids_are_never_generated(tmp_path):
    # Experts of vocab 128 whose tokenizer has 100 tokens: ids 100..127 are padding, as
    # 50257..50303 are for GPT-2. Without the limit they are drawn (the test can fail).
    tok = {"name": "gpt2", "vocab_size": 100, "eot_token": 99}
    make_expert_runs(tmp_path / "pad", vocab_size=V, block_size=BLOCK, scale=0.4, tokenizer=tok)
    mix = TiMoE.from_expert_dirs([tmp_path / "pad"])
    kw = dict(query_date="2024", max_new_tokens=60, temperature=2.0)
    unlimited = [t for s in range(3) for t in generate_tokens(
        mix, prompt(5), seed=s, tokenizer_vocab_size=V, **kw).tokens]
    assert max(unlimited) >= 100
    for s in range(3):
        assert max(generate_tokens(mix, prompt(5), seed=s, **kw).tokens) < 100
    assert max(generate_tokens(mix, prompt(5), greedy=True, **kw).tokens) < 100
    lp = torch.full((V,), -50.0)
    lp[120] = 0.0  # a padding id holds all the mass
    assert sample_token(lp, greedy=True, vocab_limit=100) < 100
    assert sample_token(lp, greedy=True) == 120
    picks = {sample_token(lp, vocab_limit=100, generator=torch.Generator().manual_seed(s))
             for s in range(20)}
    assert max(picks) < 100


def test_stops_at_end_of_text(tmp_path, runs):
    mix = mixture(tmp_path)
    first = generate_tokens(mix, prompt(5), query_date="2016", max_new_tokens=3, greedy=True)
    stop = first.tokens[0]
    res = generate_tokens(mix, prompt(5), query_date="2016", max_new_tokens=3, greedy=True,
                          eot_token=stop)
    assert res.tokens == [] and res.stop_reason == "eot"
    second = first.tokens[1]
    if second != stop:
        res = generate_tokens(mix, prompt(5), query_date="2016", max_new_tokens=3, greedy=True,
                              eot_token=second)
        assert res.tokens == [stop] and res.stop_reason == "eot"


def test_sampling_controls(tmp_path, runs):
    mix = mixture(tmp_path)
    kw = dict(query_date="2018", max_new_tokens=20)
    greedy = generate_tokens(mix, prompt(4), greedy=True, **kw).tokens
    assert generate_tokens(mix, prompt(4), temperature=0.0, **kw).tokens == greedy
    assert generate_tokens(mix, prompt(4), top_k=1, seed=3, **kw).tokens == greedy
    a = generate_tokens(mix, prompt(4), seed=1, temperature=1.5, **kw).tokens
    assert generate_tokens(mix, prompt(4), seed=1, temperature=1.5, **kw).tokens == a
    assert generate_tokens(mix, prompt(4), seed=2, temperature=1.5, **kw).tokens != a
    lp = torch.log_softmax(torch.randn(V), -1)
    picks = {sample_token(lp, top_k=3, generator=torch.Generator().manual_seed(s))
             for s in range(50)}
    assert picks <= set(lp.topk(3).indices.tolist())


def test_generation_bad_input(tmp_path):
    make_expert_runs(tmp_path / "runs", ["2015-2016", "2017-2018"], vocab_size=V)
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], options=MixtureOptions(policy="inclusive"))
    with pytest.raises(TimoeError, match="first query date with an eligible expert is 2015-01-01"):
        generate_tokens(mix, prompt(3), query_date="2014")
    with pytest.raises(TimoeError, match="needs --query-date"):
        generate_tokens(mix, prompt(3))
    with pytest.raises(TimoeError, match="outside the model's vocabulary"):
        generate_tokens(mix, [V + 5], query_date="2016")
    with pytest.raises(TimoeError, match="prompt is empty"):
        generate_tokens(mix, [], query_date="2016")
    assert mix.loaded_experts() == []
    res = generate_tokens(mix, [], query_date="2016", eot_token=V - 1, max_new_tokens=2,
                          greedy=True)
    assert res.prompt_tokens == [] and len(res.tokens) <= 2


# ----------------------------------------------------------------------- CLI


@pytest.fixture
def gpt2_runs(tmp_path):
    """Experts with the GPT-2 vocabulary (the CLI encodes text), 2013-2014 missing."""
    return make_expert_runs(tmp_path / "runs", ["2015-2016", "2017-2018", "2019-2020"],
                            vocab_size=50304, block_size=BLOCK, scale=0.05)


def test_cli_train_router_avg_then_generate(tmp_path, gpt2_runs):
    r = invoke_cli("train-router", "--policy", "inclusive", "--strategy", "avg", "--experts", tmp_path / "runs",
                "--out", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "m" / "timoe.json").is_file()
    assert (tmp_path / "m" / "config.yaml").is_file()  # the resolved config beside it
    assert "first usable query date: 2015-01-01" in r.stdout

    args = ["generate", "--model", tmp_path / "m", "--query-date", "2018", "--prompt",
            "In 2018 the mayor was", "--max-new-tokens", "40", "--greedy"]
    cached = invoke_cli(*args)
    assert cached.exit_code == 0, cached.stderr
    assert cached.stdout.startswith("In 2018 the mayor was")
    assert "2015-2016, 2017-2018" in cached.stderr and "tokens/s" in cached.stderr
    full = invoke_cli(*args, "--no-cache")
    assert full.exit_code == 0 and full.stdout == cached.stdout

    sampled = invoke_cli("generate", "--model", tmp_path / "m", "--query-date", "2020-05",
                      "--prompt", "", "--max-new-tokens", "5", "--temperature", "0.7",
                      "--top-k", "20", "--seed", "4")
    assert sampled.exit_code == 0, sampled.stderr

    # A single expert run dir works too; the date does not restrict it (a note says so).
    single = invoke_cli("generate", "--model", gpt2_runs["2017-2018"], "--prompt", "Hello",
                     "--max-new-tokens", "3", "--greedy")
    assert single.exit_code == 0, single.stderr


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, gpt2_runs):
    assert invoke_cli("train-router", "--policy", "inclusive", "--strategy", "avg", "--experts", tmp_path / "runs",
                   "--out", tmp_path / "m").exit_code == 0
    cases = [
        (["generate", "--model", tmp_path / "m", "--query-date", "2014", "--prompt", "x"],
         "2015-01-01"),
        (["generate", "--model", tmp_path / "m", "--prompt", "x"], "--query-date is required"),
        (["generate", "--model", tmp_path, "--query-date", "2016", "--prompt", "x"],
         "not a TiMoE bundle"),
        (["generate", "--model", tmp_path / "m", "--query-date", "2016", "--prompt", "x",
          "--strategy", "learned-avg"], "no learned-avg router"),
        (["generate", "--model", tmp_path / "m", "--query-date", "2016"], "--prompt is required"),
        (["train-router", "--policy", "inclusive", "--strategy", "avg", "--experts", tmp_path / "runs", "--out",
          tmp_path / "m"], "already holds a bundle"),
        (["train-router", "--policy", "inclusive", "--strategy", "learned-avg", "--experts", tmp_path / "runs", "--out",
          tmp_path / "m2"], "--data DATA_DIR is required"),
        (["train-router", "--policy", "inclusive", "--strategy", "avg", "--experts", tmp_path / "nope", "--out",
          tmp_path / "m3"], "does not exist"),
    ]
    for args, message in cases:
        r = invoke_cli(*args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "m2").exists() and not (tmp_path / "m3").exists()
    assert invoke_cli("train-router", "--policy", "inclusive", "--strategy", "avg", "--experts", tmp_path / "runs",
                   "--out", tmp_path / "m", "--overwrite").exit_code == 0


def test_eot_of_the_gpt2_tokenizer_is_the_stop_token(tmp_path, gpt2_runs):
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], options=MixtureOptions(policy="inclusive"))
    assert mix.tokenizer["eot_token"] == GPT2_EOT
