"""The proof of point-in-time validity for experts that start from what came before.

As tests/test_counterfactual.py, the built-in corpus is built in full and from
`prepare-data --until D` (D = 2016-12-31 at a slice end, D = 2015-12-31 inside the
2015-2016 slice), but each expert starts from other weights: chained, each slice's from
the preceding slice's final expert (`--init-from previous`), or all from one shared
base (`--base --until 2013`, `--init-from BASE`). Read as of D, the two builds must agree
bitwise: per-year perplexity (years <= D), every TSQA choice score, the artefacts used,
and the run.json (the chain with its checksums) and weights of every artefact with
cutoff <= D. Under the inclusive rule the chained comparison differs (the negative
control). The run dirs are named relative to each build's folder, as a user would.
Everything is built twice: with the defaults (monthly stages, averaged bfloat16
snapshots) and with yearly stages and float32 decay branches.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from helpers import one_thread  # noqa: F401 (fixture)

from timoe_core.config import (
    EvaluateConfig,
    PrepareDataConfig,
    TrainExpertConfig,
    TrainRouterConfig,
)
from timoe_core.data.manifest import load_manifest
from timoe_core.data.prepare import prepare_data
from timoe_core.evaluate.run import run_evaluate
from timoe_core.model.run_info import read_run_info
from timoe_core.recipes.registry import train_router
from timoe_core.train import train_expert

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

CUTS = ["2016-12-31", "2015-12-31"]
MIXTURES = ["chained-avg", "chained-learned-avg", "based-avg"]
TSQA_ITEMS = 80
TRAIN = {"batch_size": 2, "steps_per_stage": 2, "device": "cpu", "log_every": 100,
         "eval_batches": 1}
MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "seq_len": 32}
# Each build twice: with the defaults (monthly stages, averaged bfloat16 snapshots) and
# with yearly stages and float32 decay-branch snapshots.
PERIODS = {
    "defaults": ({}, {}),
    "yearly-decay": ({"cutoff_every": "year"},
                     {"snapshot_kind": "decay", "snapshot_dtype": "float32"}),
}


def build(root: Path, until: str | None, period: str) -> dict[str, Path]:
    """data, a base, chained and base-started experts and their bundles under `root`, all
    named relative to it (the working directory while building), with PERIODS[period]."""
    stages, snapshots = PERIODS[period]
    train, expert = TRAIN | stages, MODEL | stages | snapshots
    root.mkdir(parents=True)
    here = Path.cwd()
    os.chdir(root)
    try:
        data = Path("data")
        prepare_data(PrepareDataConfig(out=data, seq_len=32, val_fraction=0.3, workers=1,
                                       builtin_docs_per_year=12, until=until))
        manifest = load_manifest(data)
        with_tokens = set(manifest.years_with_tokens("train"))
        slices = [s for s in manifest.time_slicing().slices if with_tokens & set(s.years)]
        train_expert(TrainExpertConfig(base=True, until="2013", data=data, out=Path("base"),
                                       **expert, **TRAIN))
        for k, s in enumerate(slices):
            train_expert(TrainExpertConfig(year=s.start_year, data=data,
                                           out=Path("chained") / s.label,
                                           init_from="previous" if k else None,
                                           **expert, **TRAIN))
            train_expert(TrainExpertConfig(year=s.start_year, data=data,
                                           out=Path("based") / s.label, init_from="base",
                                           **expert, **TRAIN))
        for name, experts, strategy in (("chained-avg", "chained", "avg"),
                                        ("chained-learned-avg", "chained", "learned-avg"),
                                        ("based-avg", "based", "avg")):
            train_router(TrainRouterConfig(strategy=strategy, experts=[Path(experts)], data=data,
                                           out=Path(name), **train))
    finally:
        os.chdir(here)
    return {name: root / name for name in ("data", "base", "chained", "based", *MIXTURES)}


@pytest.fixture(scope="module", params=list(PERIODS))
def builds(request, tmp_path_factory) -> dict[str | None, dict[str, Path]]:
    root = tmp_path_factory.mktemp(f"counterfactual_chained_{request.param}")
    return {until: build(root / (until or "all"), until, request.param)
            for until in [None, *CUTS]}


_ANSWERS: dict[tuple, dict] = {}


def answers(paths: dict[str, Path], name: str, when: str, policy: str | None = None) -> dict:
    key = (paths[name], when, policy)
    if key not in _ANSWERS:
        result = run_evaluate(EvaluateConfig(model=paths[name], data=paths["data"],
                                             tsqa="builtin", query_date=when, policy=policy,
                                             device="cpu", batch_size=4,
                                             max_items=TSQA_ITEMS))
        year = int(when[:4])
        _ANSWERS[key] = {
            "perplexity": {y: v for y, v in result.report["perplexity"].items()
                           if int(y) <= year},
            "tsqa": result.report["tsqa"], "scores": result.tsqa.scores,
            "artefacts": result.report["artefacts_used"]}
    return _ANSWERS[key]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def artefacts_up_to(paths: dict[str, Path], when: str) -> dict[str, str]:
    """sha256 of the weights and run.json of every expert artefact with cutoff <= when, by
    run and cutoff, as the point-in-time rule reads them (a full build's snapshot is what
    a build cut there answers with: its final weights, or the snapshot it wrote at its
    own cutoff)."""
    out = {}
    for family in ("base", "chained", "based"):
        runs = [paths[family]] if family == "base" else sorted(paths[family].iterdir())
        for run in runs:
            info = read_run_info(run)
            by_cutoff = {info.data_cutoff: run} | {s["data_cutoff"]: run / s["path"]
                                                   for s in info.snapshots}
            for cutoff, folder in by_cutoff.items():
                if cutoff <= when:
                    for f in ("model.safetensors", "run.json"):
                        out[f"{run.relative_to(paths['data'].parent)}@{cutoff}/{f}"] = sha(
                            folder / f)
    return out


@pytest.mark.parametrize("when", CUTS)
@pytest.mark.parametrize("name", MIXTURES)
def test_a_chained_answer_as_of_d_is_bitwise_the_one_built_without_later_text(builds, name,
                                                                              when):
    full, cut = answers(builds[None], name, when), answers(builds[when], name, when)
    assert len([v for v in full["perplexity"].values() if v is not None]) >= 3
    assert full["tsqa"]["n"] == TSQA_ITEMS and len(full["scores"]) == TSQA_ITEMS
    for key in ("perplexity", "tsqa", "scores", "artefacts"):
        assert full[key] == cut[key], key
    assert full["artefacts"] and all(a["data_cutoff"] <= when for a in full["artefacts"])


@pytest.mark.parametrize("when", CUTS)
def test_every_chained_artefact_up_to_d_is_byte_identical(builds, when):
    full, cut = artefacts_up_to(builds[None], when), artefacts_up_to(builds[when], when)
    assert full == cut
    # (monthly: the last month end of 2015 with data, as the cut build's own cutoff)
    for family in ("chained", "based"):
        assert any(k.startswith(f"{family}/2015-2016@2015-") and k.endswith("/run.json")
                   for k in full), family


def test_the_chain_is_recorded_and_read_before_the_slice(builds):
    paths = builds[None]
    first = paths["chained"] / "2013-2014"
    second = read_run_info(paths["chained"] / "2015-2016")
    assert second.init_from is not None and second.init_from.spec == "previous"
    assert second.init_from.sha256 == sha(first / "model.safetensors")
    assert second.init_from.data_cutoff == read_run_info(first).data_cutoff
    assert second.init_from.data_cutoff.startswith("2014-")
    third = read_run_info(paths["chained"] / "2017-2018")
    assert third.init_from.init_from == second.init_from  # the whole chain, nested
    based = read_run_info(paths["based"] / "2013-2014")
    assert (based.init_from.spec, based.init_from.data_cutoff) == (
        "base", read_run_info(paths["base"]).data_cutoff)
    assert based.init_from.data_cutoff.startswith("2013-")
    assert based.init_from.sha256 == sha(paths["base"] / "model.safetensors")


def test_the_inclusive_rule_leaks_through_the_chain_and_the_comparison_shows_it(builds):
    when = "2015-12-31"
    full = answers(builds[None], "chained-avg", when, policy="inclusive")
    cut = answers(builds[when], "chained-avg", when, policy="inclusive")
    assert full["scores"] != cut["scores"]
    assert {"name": "2015-2016@2016-12-31", "data_cutoff": "2016-12-31"} in full["artefacts"]
