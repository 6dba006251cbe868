"""The proof of point-in-time validity: an answer as of D depends on no text after D.

The whole pipeline is built from the built-in corpus (documents dated to the day) at
tiny sizes, with cutoffs every month (the default): once on every year, once per cut D
from `prepare-data --until D` (documents after D left out, slicing unchanged): experts
with an averaged bf16 snapshot at every month end (the defaults), a dense series
(`train-expert --all-years`, a float32 decay-branch snapshot at every month end), then
avg, learned-avg and coadapt bundles (monthly router stages; coadapt twice, with the
defaults and with float32 snapshots and whole adapted experts). Read as of D, the
builds must agree bitwise: per-year perplexity (years <= D), every TSQA choice score, a
seeded generation and the artefacts used; and every expert artefact with cutoff <= D is
the same file in both (weights, run.json with the data it read, snapshot.json). D = 2016-12-31 is a slice boundary; 2015-12-31 a year end inside the
2015-2016 slice; 2015-08-31 a month end inside it; 2016-07-15 mid-month, answered by
the artefacts of 2016-06-30 although the cut build has read the first half of July:
each holds only if an artefact with cutoff c is exactly what a run that never saw data
after c ends with. Under the paper code's inclusive rule the same comparison must
differ: the test can tell a leak.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from timoe_core.config import (
    CoadaptConfig,
    EvaluateConfig,
    PrepareDataConfig,
    TrainExpertConfig,
    TrainRouterConfig,
)
from timoe_core.data.manifest import load_manifest
from timoe_core.data.prepare import prepare_data
from timoe_core.evaluate.models import load_evaluated_model
from timoe_core.evaluate.run import run_evaluate
from timoe_core.generate import generate_tokens
from timoe_core.model.mixture import TiMoE
from timoe_core.recipes.registry import coadapt, train_router
from timoe_core.train import train_expert

CUTS = ["2016-12-31", "2015-12-31", "2016-07-15", "2015-08-31"]
# coadapt with the defaults (bf16 router snapshots, `--adapted-weights blocks`) stores its
# router snapshots and adapted experts as deltas from their parents; coadapt-float32
# stores float32 ones, its adapted experts whole (`--adapted-weights all`)
STRATEGIES = ["avg", "learned-avg", "coadapt", "coadapt-float32", "dense-series"]
TSQA_ITEMS = 160
TRAIN = {"batch_size": 2, "steps_per_stage": 2, "device": "cpu", "log_every": 100,
         "eval_batches": 1, "cutoff_every": "month"}
MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "seq_len": 32}


def build(root: Path, until: str | None) -> dict[str, Path]:
    """data, experts, and one bundle per strategy under `root` (library calls only)."""
    data = root / "data"
    # Slices 2013-2014 .. 2017-2018: the full build goes on two years after every cut, and
    # has experts, snapshots and router stages the cut builds lack (the slicing is the
    # same in every build).
    prepare_data(PrepareDataConfig(out=data, seq_len=32, val_fraction=0.3, workers=1,
                                   builtin_docs_per_year=12, until=until, end_year=2018))
    manifest = load_manifest(data)
    with_tokens = set(manifest.years_with_tokens("train"))
    experts = root / "experts"
    for s in manifest.time_slicing().slices:
        if with_tokens & set(s.years):
            train_expert(TrainExpertConfig(year=s.start_year, data=data,
                                           out=experts / s.label, **MODEL, **TRAIN))
    # the experts take the default snapshots (averaged, bf16), the dense series float32
    # decay branches
    dense = train_expert(TrainExpertConfig(all_years=True, data=data, out=root / "dense",
                                           snapshot_kind="decay", snapshot_dtype="float32",
                                           **MODEL, **TRAIN))
    out = {"data": data, "experts": experts, "dense-series": dense}
    for strategy in ("avg", "learned-avg"):
        out[strategy] = train_router(TrainRouterConfig(
            strategy=strategy, experts=[experts], data=data, out=root / strategy, **TRAIN))
    out["coadapt"] = coadapt(CoadaptConfig(experts=[experts], data=data, out=root / "coadapt",
                                           **TRAIN))
    out["coadapt-float32"] = coadapt(CoadaptConfig(
        experts=[experts], data=data, out=root / "coadapt-float32", snapshot_dtype="float32",
        adapted_weights="all", **TRAIN))
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str | None, dict[str, Path]]:
    root = tmp_path_factory.mktemp("counterfactual")
    return {until: build(root / (until or "all"), until) for until in [None, *CUTS]}


_ANSWERS: dict[tuple, dict] = {}


def answers(paths: dict[str, Path], strategy: str, when: str, policy: str | None = None,
            data: Path | None = None):
    """Everything read as of `when`: perplexity of the years <= when on the held-out text
    of `data` (default the build's own), the TSQA block and every choice's score, a
    seeded generation, the artefacts used."""
    data = data or paths["data"]
    key = (paths[strategy], when, policy, data)
    if key not in _ANSWERS:
        _ANSWERS[key] = _answers(paths, strategy, when, policy, data)
    return _ANSWERS[key]


def _answers(paths: dict[str, Path], strategy: str, when: str, policy: str | None,
             data: Path):
    # TSQA_ITEMS of the built-in questions, all read as of `when` (time is spent on the
    # vocabulary projection; every item is scored the same way).
    series = strategy == "dense-series"  # a dense run's snapshots, read as of each date
    result = run_evaluate(EvaluateConfig(model=paths[strategy], data=data,
                                         tsqa="builtin", query_date=when, policy=policy,
                                         device="cpu", batch_size=4, max_items=TSQA_ITEMS,
                                         strategy="dense-series" if series else None))
    year = int(when[:4])
    ppl = {y: v for y, v in result.report["perplexity"].items() if int(y) <= year}
    if series:
        mix = load_evaluated_model(paths[strategy], "dense-series", policy=policy,
                                   device="cpu").mix  # type: ignore[attr-defined]
    else:
        mix = TiMoE.from_bundle(paths[strategy])
    if policy is not None:
        mix.policy = policy
    gen = generate_tokens(mix, [464, 1266], query_date=when, max_new_tokens=6, seed=3)
    return {"perplexity": ppl, "tsqa": result.report["tsqa"], "scores": result.tsqa.scores,
            "generated": gen.tokens, "artefacts": result.report["artefacts_used"]}


@pytest.mark.parametrize("when", CUTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_answer_as_of_d_is_bitwise_the_one_built_without_later_text(builds, strategy, when):
    # Both read the same held-out text, the cut build's (the documents up to D): a year cut
    # mid-way holds fewer held-out documents than the full year.
    held_out = builds[when]["data"]
    full = answers(builds[None], strategy, when, data=held_out)
    cut = answers(builds[when], strategy, when, data=held_out)
    assert len([v for v in full["perplexity"].values() if v is not None]) >= 3
    assert full["tsqa"]["n"] == TSQA_ITEMS
    for key in ("perplexity", "tsqa", "scores", "generated", "artefacts"):
        assert full[key] == cut[key], key
    # The audit trail: nothing used is later than the query date.
    assert full["artefacts"] and all(a["data_cutoff"] <= when for a in full["artefacts"])
    # Month cutoffs answer: as of a day inside a year, an artefact of that year (a month
    # end before it), not only the previous year's end.
    latest = max(a["data_cutoff"] for a in full["artefacts"])
    assert latest > f"{int(when[:4]) - 1}-12-31", full["artefacts"]


_SAME_FILES = ("run.json", "snapshot.json")


@pytest.mark.parametrize("when", CUTS)
def test_every_expert_artefact_up_to_d_is_the_same_in_both_builds(builds, when):
    """Weights, run.json (the data it read: data_files_sha256, a partial year by the
    sha256 of its documents up to the cutoff) and snapshot.json of every expert and
    dense-series artefact with cutoff <= D: the same whether the data went on after D."""
    import json

    from timoe_core.model.weights import load_model_weights

    full, cut = builds[None], builds[when]
    compared = 0
    for root in ("experts", "dense-series"):
        runs = [full[root]] if root == "dense-series" else sorted(full[root].iterdir())
        for run in runs:
            other = cut[root] / run.name if root == "experts" else cut[root]
            info = json.loads((run / "run.json").read_text())
            folders = [run / s["path"] for s in info["snapshots"] if s["data_cutoff"] <= when]
            if info["data_cutoff"] <= when:
                folders.append(run)
            for folder in folders:
                twin = other / folder.relative_to(run)
                cutoff = json.loads((folder / "run.json").read_text())["data_cutoff"]
                if not twin.is_dir() and json.loads(
                        (other / "run.json").read_text())["data_cutoff"] == cutoff:
                    # the cut build's last stage: its final weights, where the full build
                    # has a snapshot; what it read and its weights are the same
                    twin_info = json.loads((other / "run.json").read_text())
                    info_here = json.loads((folder / "run.json").read_text())
                    assert twin_info["data_files_sha256"] == info_here["data_files_sha256"]
                    twin = other
                else:
                    for name in _SAME_FILES:
                        if (folder / name).is_file() or name == "run.json":
                            assert (folder / name).read_text() == (twin / name).read_text(), (
                                folder / name)
                files = json.loads((folder / "run.json").read_text())["data_files_sha256"]
                assert files and all(
                    "@" not in k or k.split("@")[1] <= when for k in files)
                a, b = load_model_weights(folder), load_model_weights(twin)
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                compared += 1
    # month ends inside a year were cut from partial years: at least one such artefact
    assert compared >= 6
    partial = [p for p in full["dense-series"].glob("snapshots/*/run.json")
               if any("@" in k for k in json.loads(p.read_text())["data_files_sha256"])]
    assert partial


def test_the_inclusive_rule_leaks_and_the_comparison_shows_it(builds):
    when = "2015-12-31"
    held_out = builds[when]["data"]
    full = answers(builds[None], "avg", when, policy="inclusive", data=held_out)
    cut = answers(builds[when], "avg", when, policy="inclusive", data=held_out)
    assert full["scores"] != cut["scores"]
    assert full["perplexity"] != cut["perplexity"]
    # The full build's 2015-2016 expert that answers read 2016.
    assert {"name": "2015-2016@2016-12-31", "data_cutoff": "2016-12-31"} in full["artefacts"]


def test_staged_routers_still_learn(builds):
    full, held_out = builds[None], builds["2016-12-31"]["data"]  # answers computed above
    avg = answers(full, "avg", "2016-12-31", data=held_out)
    learned = answers(full, "learned-avg", "2016-12-31", data=held_out)
    assert learned["perplexity"] != avg["perplexity"]
    assert any(a["name"] == "router@2016-12-31" for a in learned["artefacts"])
    coadapted = answers(full, "coadapt", "2016-12-31", data=held_out)
    assert any(a["name"].endswith("+adapted") for a in coadapted["artefacts"])
    # the proof of coadapt (the defaults) read deltas: every adapted expert and some
    # router snapshots are stored as deltas from their parents
    delta = full["coadapt"]
    adapted = sorted((delta / "experts").glob("*/model.parent.json"))
    assert adapted and len(adapted) == len(list((delta / "experts").glob("*/model.safetensors")))
    assert list((delta / "routers").glob("*/router.parent.json"))
