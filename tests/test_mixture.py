"""The TiMoE mixture: the four invariants of docs/architecture.md, the cost model, the bundle."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import make_expert_runs

from timoe_core.config import MixtureOptions
from timoe_core.errors import TimoeError
from timoe_core.model.bundle import BUNDLE_FILENAME, ROUTER_FILENAME
from timoe_core.model.mixture import TiMoE
from timoe_core.model.point_in_time import eligible_slices
from timoe_core.model.run_info import MODEL_FILENAME, RunInfo, read_run_info, write_run_info
from timoe_core.timeslices import TimeSlice, TimeSlicing

pytestmark = pytest.mark.filterwarnings("error")

V = 128
ALL = [s.label for s in TimeSlicing().slices]
# These tests state the paper code's rule, under which a slice answers once it has started.
INCLUSIVE = MixtureOptions(policy="inclusive")
DATES = ["2013", "2014-06", "2016", "2019-03-01", "2024"]


def _bench():
    """benchmarks/mixture.py, for its peak-memory meter (one measurement, two users)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mixture.py"
    spec = importlib.util.spec_from_file_location("bench_mixture", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def runs(tmp_path):
    return make_expert_runs(tmp_path / "runs", vocab_size=V)


@pytest.fixture
def x():
    return torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(1))


def random_router(mix: TiMoE, seed: int = 0) -> TiMoE:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mix.router.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return mix


def naive_avg(mix: TiMoE, x: torch.Tensor, date) -> torch.Tensor:
    el = mix.eligible_experts(date)
    stack = torch.stack([mix.expert(s).log_probs(x) for s in el])
    return torch.logsumexp(stack + math.log(1.0 / len(el)), dim=0)


def eligible_labels(date, policy="inclusive", labels=ALL):
    slices = [TimeSlice.from_label(x) for x in labels]
    return [s.label for s in eligible_slices(slices, date, policy)]


# ------------------------------------------------------------ causal validity


def _cases():
    for policy in ("inclusive", "strict"):
        for date in DATES:
            if policy == "strict" and date in ("2013", "2014-06"):
                continue  # no slice has ended by then: the error is tested below
            yield policy, date


@pytest.mark.parametrize("strategy", ["avg", "learned-avg"])
def test_causal_validity_ineligible_experts_never_matter(tmp_path, runs, x, strategy):
    """Bitwise equal after re-initialising every ineligible expert, and after deleting it."""
    base = TiMoE.from_expert_dirs([tmp_path / "runs"], strategy=strategy, options=INCLUSIVE)
    if strategy != "avg":
        random_router(base)
        # A router fitted on no text after the first slice's, so that point-in-time may use
        # it from then on (one fitted on every year is refused earlier: test_leaks.py).
        base.router_data_cutoff = min(r.cutoff for r in base.artefacts)
    bundle = tmp_path / "bundle"
    base.save_bundle(bundle)
    targets = torch.randint(0, V, x.shape)
    for policy, date in _cases():
        mix = TiMoE.from_bundle(bundle)
        mix.policy = policy
        assert mix.loaded_experts() == []  # lazy: nothing read at open
        ref = mix.mixture_log_probs(x, date)
        ref_t = mix.mixture_target_log_probs(x, targets, date)
        eligible = eligible_labels(date, policy)
        assert mix.loaded_experts() == eligible

        # Different weights for every ineligible expert (their checksums now fail too).
        work = tmp_path / f"work-{policy}-{date}"
        shutil.copytree(tmp_path / "runs", work / "runs")
        shutil.copytree(bundle, work / "bundle")
        make_expert_runs(work / "runs", [lab for lab in ALL if lab not in eligible], vocab_size=V,
                         seed=99)
        mix2 = TiMoE.from_bundle(work / "bundle")
        mix2.policy = policy
        assert torch.equal(mix2.mixture_log_probs(x, date), ref)
        assert torch.equal(mix2.mixture_target_log_probs(x, targets, date), ref_t)

        # No checkpoint files at all for them.
        for lab in ALL:
            if lab not in eligible:
                (work / "runs" / lab / MODEL_FILENAME).unlink()
        mix3 = TiMoE.from_bundle(work / "bundle")
        mix3.policy = policy
        assert torch.equal(mix3.mixture_log_probs(x, date), ref)
        assert torch.equal(mix3.mixture_target_log_probs(x, targets, date), ref_t)
        assert mix3.loaded_experts() == eligible


def test_from_expert_dirs_reads_no_weights_until_a_query(tmp_path, runs, x):
    for lab in ALL[2:]:
        (runs[lab] / MODEL_FILENAME).unlink()  # only the first two have weights
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE)
    assert mix.loaded_experts() == []
    mix.mixture_log_probs(x, "2016")
    assert mix.loaded_experts() == ["2013-2014", "2015-2016"]
    with pytest.raises(TimoeError, match="weights of expert 2017-2018 are missing"):
        mix.mixture_log_probs(x, "2017")


# ------------------------------------------------------- proper distribution


@pytest.mark.parametrize("strategy,top_k", [("avg", None), ("learned-avg", None),
                                            ("learned-avg", 2)])
@pytest.mark.parametrize("date", ["2013", "2016", "2024"])
def test_mixture_is_a_proper_distribution(tmp_path, runs, x, strategy, top_k, date):
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], strategy=strategy,
                                 options=MixtureOptions(policy="inclusive", top_k=top_k))
    if strategy != "avg":
        random_router(mix)
    lp = mix.mixture_log_probs(x, date)
    assert lp.shape == (3, 20, V) and lp.dtype == torch.float32
    assert (lp.exp().sum(-1) - 1).abs().max() < 1e-4
    # The log-weights exclude ineligible experts (weight exactly 0) and sum to 1.
    out = mix(x, torch.randint(0, V, x.shape), date)
    eligible = set(eligible_labels(date))
    for k, s in enumerate(mix.slices):
        if s.label not in eligible:
            assert torch.isneginf(out.log_weights[..., k]).all()
    assert torch.allclose(out.log_weights.logsumexp(-1), torch.zeros(3, 20), atol=1e-6)


def test_ineligible_experts_are_excluded_not_zeroed(tmp_path, runs, x):
    """The paper's bug: a masked expert with zero logits is uniform and still takes mass."""
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE)
    lp = mix.mixture_log_probs(x, "2013")  # a single eligible expert
    alone = mix.expert("2013-2014").log_probs(x)
    assert torch.allclose(lp, alone, atol=1e-6)
    zeroed = torch.logsumexp(torch.stack([alone, torch.full_like(alone, -math.log(V))]), 0) \
        - math.log(2)
    assert not torch.allclose(lp, zeroed, atol=1e-3)


# ------------------------------------------------------ sequence causality


@pytest.mark.parametrize("strategy", ["avg", "learned-avg"])
def test_changing_a_later_token_leaves_earlier_positions_alone(tmp_path, runs, x, strategy):
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], strategy=strategy, options=INCLUSIVE)
    if strategy != "avg":
        random_router(mix)
    dates = ["2016", "2024", "2019"]
    targets = torch.randint(0, V, x.shape)
    ref = mix.mixture_log_probs(x, dates)
    ref_t = mix.mixture_target_log_probs(x, targets, dates)
    for t in (0, 7, 18):
        y = x.clone()
        y[:, t + 1] = (y[:, t + 1] + 1 + torch.arange(3)) % V
        lp = mix.mixture_log_probs(y, dates)
        assert torch.equal(lp[:, : t + 1], ref[:, : t + 1])
        assert not torch.equal(lp[:, t + 1], ref[:, t + 1])
        assert torch.equal(mix.mixture_target_log_probs(y, targets, dates)[:, : t + 1],
                           ref_t[:, : t + 1])


# --------------------------------------------------------------- equivalence


@pytest.mark.parametrize("chunk", [None, 7, 64])
@pytest.mark.parametrize("date", ["2013", "2016", "2020", "2024"])
def test_streaming_avg_equals_the_naive_dense_mixture(tmp_path, runs, x, date, chunk):
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE)
    mix.chunk_tokens = chunk
    lp = mix.mixture_log_probs(x, date)
    assert torch.allclose(lp, naive_avg(mix, x, date), atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy,top_k", [("avg", None), ("learned-avg", None),
                                            ("learned-avg", 1), ("learned-avg", 3)])
def test_target_log_probs_equal_the_full_mixture_at_the_targets(tmp_path, runs, x, strategy,
                                                                top_k):
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], strategy=strategy,
                                 options=MixtureOptions(policy="inclusive", top_k=top_k))
    if strategy != "avg":
        random_router(mix)
    mix.chunk_tokens = 16
    targets = torch.randint(0, V, x.shape)
    for dates in ("2016", "2024", ["2013", "2024", "2018"]):
        full = mix.mixture_log_probs(x, dates).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        tlp = mix.mixture_target_log_probs(x, targets, dates)
        assert tlp.shape == (3, 20)
        assert torch.allclose(tlp, full, atol=1e-5, rtol=0)
        # The training loss (mean NLL from target log-probs) is the full mixture's NLL.
        assert abs(-tlp.mean().item() + full.mean().item()) < 1e-5


def test_a_single_expert_and_a_one_expert_mixture_share_the_target_kernel(tmp_path, runs, x):
    """One target-log-prob kernel: a single expert under evaluation and an avg mixture
    whose only eligible expert it is give bitwise equal log P(target), ignored targets
    (-1) included, with or without autograd."""
    from timoe_core.evaluate.models import load_evaluated_model
    from timoe_core.model.logprobs import target_log_probs

    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE)
    single = load_evaluated_model(runs["2013-2014"], "expert:2013")
    targets = torch.randint(0, V, x.shape, generator=torch.Generator().manual_seed(2))
    targets[0, -3:] = -1
    ref = mix.mixture_target_log_probs(x, targets, "2013")  # only 2013-2014 is eligible
    assert torch.equal(single.target_log_probs(x, targets, None), ref)
    assert torch.equal(ref[0, -3:], torch.zeros(3))
    expert = mix.expert("2013-2014")
    for chunk in (None, 7):
        with torch.enable_grad():
            expert.requires_grad_(True)
            graded = target_log_probs(expert, x, targets, chunk)
        assert graded.requires_grad
        assert torch.allclose(graded.detach(), ref, atol=1e-6, rtol=0)


def test_learned_router_weights_are_used(tmp_path, runs, x):
    """A non-uniform router gives a different mixture than avg, built from its weights."""
    mix = random_router(TiMoE.from_expert_dirs([tmp_path / "runs"], strategy="learned-avg", options=INCLUSIVE))
    out = mix(x, torch.zeros_like(x), "2016")
    lw = out.log_weights  # (B, T, K)
    stack = torch.stack([mix.expert(s).log_probs(x) for s in mix.slices[:2]], dim=-2)
    dense = torch.logsumexp(stack + lw[..., :2, None], dim=-2)
    assert torch.allclose(mix.mixture_log_probs(x, "2016"), dense, atol=1e-5)
    assert not torch.allclose(dense, naive_avg(mix, x, "2016"), atol=1e-3)


def test_untrained_router_is_exactly_avg(tmp_path, runs, x):
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], strategy="learned-avg", options=INCLUSIVE)
    avg = TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE)
    assert torch.allclose(mix.mixture_log_probs(x, "2020"), avg.mixture_log_probs(x, "2020"),
                          atol=1e-6)


# ---------------------------------------------------------------- mixed dates


@pytest.mark.parametrize("strategy", ["avg", "learned-avg"])
def test_mixed_dates_in_one_batch_equal_each_row_alone(tmp_path, runs, strategy):
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], strategy=strategy, options=INCLUSIVE)
    if strategy != "avg":
        random_router(mix)
    mix.chunk_tokens = 9
    x = torch.randint(0, V, (5, 12), generator=torch.Generator().manual_seed(3))
    targets = torch.randint(0, V, x.shape)
    dates = ["2024", "2013", "2024", "2016-07", "2013-02"]  # non-contiguous row groups
    lp = mix.mixture_log_probs(x, dates)
    tlp = mix.mixture_target_log_probs(x, targets, dates)
    for b, d in enumerate(dates):
        alone = mix.mixture_log_probs(x[b : b + 1], d)[0]
        assert torch.allclose(lp[b], alone, atol=1e-5, rtol=0)
        assert torch.allclose(tlp[b], mix.mixture_target_log_probs(x[b : b + 1],
                                                                   targets[b : b + 1], d)[0],
                              atol=1e-5, rtol=0)
    # Dates as a tensor of years (what TokenWindows.batch gives) work the same.
    years = torch.tensor([2024, 2013, 2024, 2016, 2013])
    assert torch.allclose(mix.mixture_target_log_probs(x, targets, years)[[0, 1, 2, 4]],
                          tlp[[0, 1, 2, 4]], atol=1e-6)


def test_each_expert_runs_only_on_its_eligible_rows(tmp_path, runs, monkeypatch):
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE)
    seen: dict[str, int] = {}
    for s in mix.slices:
        expert = mix.expert(s)
        orig = expert.hidden_states

        def spy(idx, kv_cache=None, _orig=orig, _label=s.label):
            seen[_label] = seen.get(_label, 0) + idx.size(0)
            return _orig(idx, kv_cache)

        monkeypatch.setattr(expert, "hidden_states", spy)
    x = torch.randint(0, V, (4, 8))
    mix.mixture_log_probs(x, ["2013", "2016", "2024", "2016"])
    assert seen == {"2013-2014": 4, "2015-2016": 3, "2017-2018": 1, "2019-2020": 1,
                    "2021-2022": 1, "2023-2024": 1}


# ---------------------------------------------------------- eligibility errors


def test_no_eligible_expert_names_the_first_usable_date(tmp_path, x):
    make_expert_runs(tmp_path / "runs", ALL[1:], vocab_size=V)  # 2013-2014 missing
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE)
    with pytest.raises(TimoeError, match="first query date with an eligible expert is 2015-01-01"):
        mix.mixture_log_probs(x, "2014")
    with pytest.raises(TimoeError, match="2015-01-01"):
        mix.mixture_target_log_probs(x, x, ["2016", "2014-12-31", "2020"])
    with pytest.raises(TimoeError, match="2015-01-01"):
        mix.eligible_experts("2013")
    mix.policy = "strict"
    with pytest.raises(TimoeError, match="2016-12-31"):
        mix.mixture_log_probs(x, "2016-06")
    assert mix.loaded_experts() == []


def test_a_missing_slice_is_never_eligible(tmp_path, x):
    labels = [lab for lab in ALL if lab != "2017-2018"]
    make_expert_runs(tmp_path / "runs", labels, vocab_size=V)
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE)
    assert [s.label for s in mix.slices] == labels
    assert [s.label for s in mix.eligible_experts("2018")] == ["2013-2014", "2015-2016"]
    assert [s.label for s in mix.eligible_experts("2019")] == ["2013-2014", "2015-2016",
                                                                "2019-2020"]
    assert (mix.mixture_log_probs(x, "2019").exp().sum(-1) - 1).abs().max() < 1e-4


def test_query_dates_must_match_the_batch(tmp_path, runs, x):
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE)
    with pytest.raises(TimoeError, match="2 query dates for a batch of 3 rows"):
        mix.mixture_log_probs(x, ["2016", "2017"])
    with pytest.raises(TimoeError, match="bad query date"):
        mix.mixture_log_probs(x, "last year")


# -------------------------------------------------------------------- memory


def test_peak_memory_does_not_grow_with_the_number_of_experts(tmp_path):
    """Never an (experts x B x T x V) stack: 6 experts cost what 1 costs."""
    measure = _bench().peak_allocated_bytes
    make_expert_runs(tmp_path / "runs", vocab_size=50304, block_size=64, scale=0.02)
    mix = TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE)
    x = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        for s in mix.slices:
            mix.expert(s)  # weights are not what is measured
        single, _ = measure(lambda: mix.expert(mix.slices[0]).log_probs(x))
        two, _ = measure(lambda: mix.mixture_log_probs(x, "2016"))
        six, _ = measure(lambda: mix.mixture_log_probs(x, "2024"))
        mixed, _ = measure(lambda: mix.mixture_log_probs(x, ["2013", "2024"]))
    btv = 2 * 64 * 50304 * 4
    assert single >= 2 * btv  # logits + log-softmax: the meter sees real allocations
    assert six <= 1.25 * single
    assert six <= 1.05 * two  # the output and one chunk, however many experts
    assert mixed <= 1.25 * single


# ----------------------------------------------------------------- bundle


def test_bundle_roundtrip_is_lazy_and_identical(tmp_path, runs, x):
    mix = random_router(TiMoE.from_expert_dirs([tmp_path / "runs"], strategy="learned-avg",
                                               options=MixtureOptions(policy="strict", top_k=2)))
    ref = mix.mixture_log_probs(x, ["2016", "2024", "2020"])
    mix.save_bundle(tmp_path / "m")
    spec = json.loads((tmp_path / "m" / BUNDLE_FILENAME).read_text())
    assert spec["format_version"] == 1 and spec["strategy"] == "learned-avg"
    assert spec["policy"] == "strict" and spec["options"]["top_k"] == 2
    assert spec["router"]["slice_labels"] == ALL and (tmp_path / "m" / ROUTER_FILENAME).is_file()
    assert spec["tokenizer"]["name"] == "gpt2"
    e = spec["experts"][0]
    assert e["slice_label"] == "2013-2014" and e["start_date"] == "2013-01-01"
    assert e["end_date"] == "2014-12-31" and e["path"] == "../runs/2013-2014"
    assert e["model_config"]["vocab_size"] == V and len(e["weights_sha256"]) == 64

    back = TiMoE.from_bundle(tmp_path / "m")
    assert back.loaded_experts() == []
    assert (back.strategy, back.policy, back.options.top_k) == ("learned-avg", "strict", 2)
    assert [s.label for s in back.slices] == ALL
    assert torch.equal(back.mixture_log_probs(x, ["2016", "2024", "2020"]), ref)

    # Bundle and runs moved together: the relative paths resolve.
    shutil.copytree(tmp_path / "m", tmp_path / "moved" / "m")
    shutil.copytree(tmp_path / "runs", tmp_path / "moved" / "runs")
    shutil.rmtree(tmp_path / "runs")
    moved = TiMoE.from_bundle(tmp_path / "moved" / "m")
    assert torch.equal(moved.mixture_log_probs(x, ["2016", "2024", "2020"]), ref)
    assert moved.expert_dirs["2013-2014"] == (tmp_path / "moved" / "runs" / "2013-2014").resolve()


def test_bundle_moved_alone_falls_back_to_absolute_paths(tmp_path, runs, x):
    TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE).save_bundle(tmp_path / "a" / "m")
    shutil.move(tmp_path / "a" / "m", tmp_path / "elsewhere")
    mix = TiMoE.from_bundle(tmp_path / "elsewhere")
    assert torch.allclose(mix.mixture_log_probs(x, "2016"), naive_avg(mix, x, "2016"), atol=1e-5)


def test_a_changed_expert_fails_its_checksum_naming_the_file(tmp_path, runs, x):
    TiMoE.from_expert_dirs([tmp_path / "runs"], options=INCLUSIVE).save_bundle(tmp_path / "m")
    make_expert_runs(tmp_path / "runs", ["2015-2016"], vocab_size=V, seed=5)
    mix = TiMoE.from_bundle(tmp_path / "m")
    mix.mixture_log_probs(x, "2014")  # the changed expert is not eligible: fine
    with pytest.raises(TimoeError, match=r"2015-2016/model\.safetensors fails its checksum"):
        mix.mixture_log_probs(x, "2016")


def test_experts_must_share_tokenizer_and_vocab(tmp_path):
    make_expert_runs(tmp_path / "a", ALL[:2], vocab_size=V)
    make_expert_runs(tmp_path / "a", ALL[2:3], vocab_size=V + 64)
    with pytest.raises(TimoeError,
                       match="model_config.vocab_size: 2013-2014 has 128, 2017-2018 has 192"):
        TiMoE.from_expert_dirs([tmp_path / "a"])
    make_expert_runs(tmp_path / "b", ALL[:2], vocab_size=V)
    make_expert_runs(tmp_path / "b", ALL[2:3], vocab_size=V,
                     tokenizer={"name": "gpt2", "vocab_size": 50257, "eot_token": 0})
    with pytest.raises(TimoeError, match="tokenizer.eot_token"):
        TiMoE.from_expert_dirs([tmp_path / "b"])


def test_expert_dirs_forms_and_refusals(tmp_path):
    runs = make_expert_runs(tmp_path / "runs", ALL[:3], vocab_size=V)
    # A dense run beside the experts is skipped in a folder, refused when named.
    dense = tmp_path / "runs" / "dense"
    shutil.copytree(runs["2013-2014"], dense)
    info = read_run_info(dense)
    write_run_info(dense, RunInfo(**{**info.model_dump(), "kind": "dense",
                                     "slice_label": "2013-2024", "end_date": "2024-12-31"}))
    assert TiMoE.from_expert_dirs(tmp_path / "runs", options=INCLUSIVE).labels == ALL[:3]
    assert TiMoE.from_expert_dirs([runs["2015-2016"], runs["2013-2014"]]).labels == ALL[:2]
    with pytest.raises(TimoeError, match="dense run, not a time-slice expert"):
        TiMoE.from_expert_dirs([dense])
    with pytest.raises(TimoeError, match="two experts for slice 2013-2014"):
        TiMoE.from_expert_dirs([tmp_path / "runs", runs["2013-2014"]])
    with pytest.raises(TimoeError, match="does not exist"):
        TiMoE.from_expert_dirs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TimoeError, match="neither an expert run dir"):
        TiMoE.from_expert_dirs([tmp_path / "empty"])
    with pytest.raises(TimoeError, match="no router"):
        TiMoE.from_expert_dirs(tmp_path / "runs", options=INCLUSIVE).strategy = "learned-avg"


def test_as_average_shares_experts(tmp_path, runs, x):
    mix = random_router(TiMoE.from_expert_dirs([tmp_path / "runs"], strategy="learned-avg", options=INCLUSIVE))
    avg = mix.as_average()
    assert avg.strategy == "avg" and avg.router is None
    assert torch.allclose(avg.mixture_log_probs(x, "2016"), naive_avg(mix, x, "2016"), atol=1e-5)
    assert mix.loaded_experts() == avg.loaded_experts()


# ----------------------------------------------------------- training hooks


def test_trainable_expert_gets_gradients_and_the_others_none(tmp_path, runs, x):
    mix = random_router(TiMoE.from_expert_dirs([tmp_path / "runs"], strategy="coadapt", options=INCLUSIVE))
    mix.set_trainable_experts(["2015-2016"])
    mix.train()
    targets = torch.randint(0, V, x.shape)
    out = mix(x, targets, "2016")
    loss = -out.target_log_probs.mean() + out.router_aux.total
    loss.backward()
    active = mix.expert("2015-2016")
    assert active.training
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in active.parameters())
    frozen = mix.expert("2013-2014")
    assert not frozen.training and all(p.grad is None for p in frozen.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in mix.router.parameters())
    assert mix.loaded_experts() == ["2013-2014", "2015-2016"]

    # The adapted expert is stored in the bundle; the others stay where they were.
    with torch.no_grad():
        for p in active.parameters():
            p.add_(0.01)
    mix.eval()
    ref = mix.mixture_log_probs(x, "2016")
    mix.save_bundle(tmp_path / "m")
    spec = json.loads((tmp_path / "m" / BUNDLE_FILENAME).read_text())
    by_label = {e["slice_label"]: e for e in spec["experts"]}
    assert by_label["2015-2016"]["embedded"]
    assert by_label["2015-2016"]["path"] == "experts/2015-2016"
    assert (tmp_path / "m" / "experts" / "2015-2016" / MODEL_FILENAME).is_file()
    assert not by_label["2013-2014"]["embedded"]
    back = TiMoE.from_bundle(tmp_path / "m")
    assert back.strategy == "coadapt"
    assert torch.equal(back.mixture_log_probs(x, "2016"), ref)


def test_cached_frozen_log_probs_replace_running_the_experts(tmp_path, runs, x, monkeypatch):
    mix = random_router(TiMoE.from_expert_dirs([tmp_path / "runs"], strategy="learned-avg", options=INCLUSIVE))
    targets = torch.randint(0, V, x.shape)
    dates = ["2016", "2024", "2013"]
    cache = mix.experts_target_log_probs(x, targets, dates)
    assert cache.shape == (3, 20, 6)
    assert torch.isneginf(cache[2, :, 1:]).all() and torch.isfinite(cache[1]).all()
    ref = mix(x, targets, dates)
    for s in mix.slices:  # any expert run now would fail
        monkeypatch.setattr(mix.expert(s), "hidden_states", None)
    cached = mix(x, targets, dates, cached_expert_log_probs=cache.half().float())
    assert torch.allclose(cached.target_log_probs, ref.target_log_probs, atol=1e-2)
    cached.target_log_probs.sum().backward()  # the router still learns from the cache
    assert mix.router.out.weight.grad is not None


def test_router_aux_losses_are_reported(tmp_path, runs, x):
    mix = random_router(TiMoE.from_expert_dirs([tmp_path / "runs"], strategy="learned-avg",
                                               options=MixtureOptions(entropy_coef=0.5,
                                                                      balance_coef=0.25,
                                                                      z_loss_coef=0.125)))
    aux = mix(x, torch.randint(0, V, x.shape), "2020").router_aux
    expected = 0.5 * aux.entropy + 0.25 * aux.balance + 0.125 * aux.z_loss
    assert torch.allclose(aux.total, expected)
    assert 0 < aux.entropy <= math.log(4) + 1e-6  # 4 experts eligible in 2020
