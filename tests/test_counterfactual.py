"""The proof of point-in-time validity: an answer as of D depends on no text after D.

The whole pipeline is built twice from the built-in corpus at tiny sizes: once on every
year, once from `prepare-data --until D` (documents after D left out, slicing
unchanged): experts with snapshots, then avg, learned-avg and coadapt bundles. Read as
of D, the two builds must agree bitwise: per-year perplexity (years <= D), every TSQA
choice score and a seeded generation. D = 2016-12-31 is a slice boundary; D =
2015-12-31 is inside the 2015-2016 slice, so it holds only if the full build's 2015
snapshot is exactly what a run that never saw 2016 ends with. Under the paper code's
inclusive rule the same comparison must differ: the test can tell a leak.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from timoe_core.config import (
    CoadaptConfig,
    EvaluateConfig,
    PrepareDataConfig,
    TrainExpertConfig,
    TrainRouterConfig,
)
from timoe_core.data.manifest import load_manifest
from timoe_core.data.prepare import prepare_data
from timoe_core.evaluate.run import run_evaluate
from timoe_core.generate import generate_tokens
from timoe_core.model.mixture import TiMoE
from timoe_core.train import coadapt, train_expert, train_router

CUTS = ["2016-12-31", "2015-12-31"]
STRATEGIES = ["avg", "learned-avg", "coadapt"]
TSQA_ITEMS = 160
TRAIN = {"batch_size": 2, "steps_per_stage": 2, "device": "cpu", "log_every": 100,
         "eval_batches": 1}
MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "seq_len": 32}


def build(root: Path, until: str | None) -> dict[str, Path]:
    """data, experts, and one bundle per strategy under `root` (library calls only)."""
    data = root / "data"
    prepare_data(PrepareDataConfig(out=data, seq_len=32, val_fraction=0.3, workers=1,
                                   builtin_docs_per_year=12, until=until))
    manifest = load_manifest(data)
    with_tokens = set(manifest.years_with_tokens("train"))
    experts = root / "experts"
    for s in manifest.time_slicing().slices:
        if with_tokens & set(s.years):
            train_expert(TrainExpertConfig(year=s.start_year, data=data,
                                           out=experts / s.label, **MODEL, **TRAIN))
    out = {"data": data, "experts": experts}
    for strategy in ("avg", "learned-avg"):
        out[strategy] = train_router(TrainRouterConfig(
            strategy=strategy, experts=[experts], data=data, out=root / strategy, **TRAIN))
    out["coadapt"] = coadapt(CoadaptConfig(experts=[experts], data=data, out=root / "coadapt",
                                           **TRAIN))
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str | None, dict[str, Path]]:
    root = tmp_path_factory.mktemp("counterfactual")
    return {until: build(root / (until or "all"), until) for until in [None, *CUTS]}


_ANSWERS: dict[tuple, dict] = {}


def answers(paths: dict[str, Path], strategy: str, when: str, policy: str | None = None):
    """Everything read as of `when`: perplexity of the years <= when, the TSQA block and
    every choice's score, a seeded generation, the artefacts used."""
    key = (paths[strategy], when, policy)
    if key not in _ANSWERS:
        _ANSWERS[key] = _answers(paths, strategy, when, policy)
    return _ANSWERS[key]


def _answers(paths: dict[str, Path], strategy: str, when: str, policy: str | None):
    # TSQA_ITEMS of the built-in questions, all read as of `when` (time is spent on the
    # vocabulary projection; every item is scored the same way).
    result = run_evaluate(EvaluateConfig(model=paths[strategy], data=paths["data"],
                                         tsqa="builtin", query_date=when, policy=policy,
                                         device="cpu", batch_size=4, max_items=TSQA_ITEMS))
    year = int(when[:4])
    ppl = {y: v for y, v in result.report["perplexity"].items() if int(y) <= year}
    mix = TiMoE.from_bundle(paths[strategy])
    if policy is not None:
        mix.policy = policy
    gen = generate_tokens(mix, [464, 1266], query_date=when, max_new_tokens=6, seed=3)
    return {"perplexity": ppl, "tsqa": result.report["tsqa"], "scores": result.tsqa.scores,
            "generated": gen.tokens, "artefacts": result.report["artefacts_used"]}


@pytest.mark.parametrize("when", CUTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_answer_as_of_d_is_bitwise_the_one_built_without_later_text(builds, strategy, when):
    full, cut = answers(builds[None], strategy, when), answers(builds[when], strategy, when)
    assert len([v for v in full["perplexity"].values() if v is not None]) >= 3
    assert full["tsqa"]["n"] == TSQA_ITEMS
    for key in ("perplexity", "tsqa", "scores", "generated", "artefacts"):
        assert full[key] == cut[key], key
    # The audit trail: nothing used is later than the query date.
    assert full["artefacts"] and all(a["data_cutoff"] <= when for a in full["artefacts"])


def test_the_inclusive_rule_leaks_and_the_comparison_shows_it(builds):
    when = "2015-12-31"
    full = answers(builds[None], "avg", when, policy="inclusive")
    cut = answers(builds[when], "avg", when, policy="inclusive")
    assert full["scores"] != cut["scores"]
    assert full["perplexity"] != cut["perplexity"]
    # The full build's 2015-2016 expert that answers read 2016.
    assert {"name": "2015-2016@2016-12-31", "data_cutoff": "2016-12-31"} in full["artefacts"]


def test_staged_routers_still_learn(builds):
    full = builds[None]
    avg = answers(full, "avg", "2016-12-31")
    learned = answers(full, "learned-avg", "2016-12-31")
    assert learned["perplexity"] != avg["perplexity"]
    assert any(a["name"] == "router@2016-12-31" for a in learned["artefacts"])
    coadapted = answers(full, "coadapt", "2016-12-31")
    assert any(a["name"].endswith("+adapted") for a in coadapted["artefacts"])
