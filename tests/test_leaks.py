"""One test per leak class an audit found: each shows that a path which let text dated
after d change something as of d no longer does (see docs/architecture.md, "Leak
classes"). tests/test_counterfactual_content.py proves the same end to end."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from helpers import write_jsonl

from timoe_core.config import PrepareDataConfig
from timoe_core.data.manifest import load_manifest
from timoe_core.data.prepare import prepare_data

WORDS = ["the", "river", "council", "market", "election", "school", "price", "energy", "team", "city", "report", "year"]


def dated_docs(years, per_year: int, seed: int, tag: str = "") -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for year in years:
        for i in range(per_year):
            body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
            month, day = rng.randint(1, 12), rng.randint(1, 28)
            docs.append({"text": f"{tag}Doc {i} of {year}. {body}.",
                         "date": f"{year}-{month:02d}-{day:02d}T{rng.randint(0, 23):02d}:00:00Z"})
    return docs


def two_corpora(tmp_path: Path) -> tuple[Path, Path]:
    """Two JSONL corpora with the same documents up to 2014-12-31; after it, other text
    and more of it, interleaved among the earlier records (not appended)."""
    early = dated_docs([2013, 2014], 30, seed=1)
    late_a = dated_docs([2015, 2016], 20, seed=2)
    late_b = dated_docs([2015, 2016, 2017], 30, seed=3, tag="Other. ")
    rng = random.Random(4)
    a, b = early + late_a, early + late_b
    rng.shuffle(a)
    rng.shuffle(b)
    return (write_jsonl(tmp_path / "a.jsonl", a), write_jsonl(tmp_path / "b.jsonl", b))


def year_bytes(data: Path, years) -> dict[str, str]:
    """sha256 of every token file of `years` (both splits)."""
    out = {}
    for split in ("train", "val"):
        for y in years:
            f = data / split / f"{y}.bin"
            out[f"{split}/{y}"] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else ""
    return out


def prep(source: Path, out: Path, **kw) -> Path:
    kw = {"seq_len": 16, "val_fraction": 0.2, "workers": 1} | kw
    prepare_data(PrepareDataConfig(source=str(source), out=out, **kw))
    return out


def sharded(source: Path, root: Path, n: int = 2, **kw) -> Path:
    shards = [prep(source, root / f"shard{k}", num_shards=n, shard_index=k, **kw)
              for k in range(n)]
    prepare_data(PrepareDataConfig(merge=shards, out=root / "merged"))
    return root / "merged"


# ------------------------------------------------- 1. sharding reorders the past


def test_sharded_and_merged_preparation_of_the_past_ignores_later_records(tmp_path):
    a, b = two_corpora(tmp_path)
    whole_a = prep(a, tmp_path / "whole_a")
    merged_a = sharded(a, tmp_path / "sharded_a")
    merged_b = sharded(b, tmp_path / "sharded_b")
    years = range(2013, 2018)
    # merged shards are the unsharded run, byte for byte
    assert year_bytes(merged_a, years) == year_bytes(whole_a, years)
    # and the past is the same whatever came after it
    assert year_bytes(merged_a, [2013, 2014]) == year_bytes(merged_b, [2013, 2014])
    for k in range(2):
        assert (year_bytes(tmp_path / "sharded_a" / f"shard{k}", [2013, 2014])
                == year_bytes(tmp_path / "sharded_b" / f"shard{k}", [2013, 2014]))
    assert year_bytes(merged_a, [2015]) != year_bytes(merged_b, [2015])  # the control


def test_record_order_and_workers_do_not_change_what_is_written(tmp_path):
    a, _ = two_corpora(tmp_path)
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    reversed_a = write_jsonl(tmp_path / "reversed.jsonl", rows[::-1])
    one = prep(a, tmp_path / "one")
    other = prepare_data(PrepareDataConfig(source=str(reversed_a), out=tmp_path / "two",
                                           seq_len=16, val_fraction=0.2, workers=3))
    assert other.files == load_manifest(one).files  # every token and index file


# ------------------------------------------------- 2. --max-docs counts later records


def test_max_docs_keeps_the_same_past_whatever_comes_later(tmp_path):
    a, b = two_corpora(tmp_path)
    for until in (None, "2014-12-31"):
        tag = until or "all"
        da = prep(a, tmp_path / f"a_{tag}", max_docs=12, until=until)
        db = prep(b, tmp_path / f"b_{tag}", max_docs=12, until=until)
        assert year_bytes(da, [2013, 2014]) == year_bytes(db, [2013, 2014])
        m = load_manifest(da)
        assert [m.years[str(y)].train.documents + m.years[str(y)].val.documents
                for y in (2013, 2014)] == [12, 12]
    # sharded with a cap, then merged: the capped unsharded run
    merged = sharded(a, tmp_path / "capped", max_docs=12)
    assert year_bytes(merged, range(2013, 2017)) == year_bytes(tmp_path / "a_all",
                                                               range(2013, 2017))
    assert load_manifest(merged).skipped == load_manifest(tmp_path / "a_all").skipped


# ------------------------------------------------------------- 5. time zones


def test_a_timestamp_is_dated_by_its_utc_date(tmp_path):
    rows = [
        {"text": "late evening in New York", "date": "2015-12-31T23:00:00-05:00"},  # 2016 UTC
        {"text": "just after midnight in Paris", "date": "2016-01-01T00:30:00+01:00"},  # 2015
        {"text": "and a little later in Berlin", "date": "2016-01-01T00:45:00+0100"},  # 2015
        {"text": "naive timestamps are UTC", "date": "2015-12-31T23:30:00"},
        {"text": "a unix timestamp", "date": 1451602800},  # 2015-12-31T23:00:00Z
    ]
    src = write_jsonl(tmp_path / "tz.jsonl", rows)
    m = load_manifest(prep(src, tmp_path / "all", val_fraction=0.01))
    assert {y: s.train.documents for y, s in m.years.items() if s.train.documents} == {
        "2015": 4, "2016": 1}
    cut = load_manifest(prep(src, tmp_path / "cut", val_fraction=0.01, until="2015-12-31"))
    assert cut.skipped["after_until"] == 1
    assert cut.years["2015"].train.documents == 4


# ------------------------------- 3. a point-in-time query uses no later artefact


@pytest.fixture(scope="module")
def mixture_inputs(tmp_path_factory):
    from helpers import make_mixture_inputs

    return make_mixture_inputs(tmp_path_factory.mktemp("leaks_mix"), steps=4)


@pytest.mark.parametrize("strategy", ["learned-avg", "coadapt"])
def test_point_in_time_refuses_a_router_trained_on_every_year(mixture_inputs, tmp_path,
                                                              capsys, strategy):
    from helpers import run_cli

    from timoe_core.config import CoadaptConfig, EvaluateConfig, TrainRouterConfig
    from timoe_core.evaluate.run import run_evaluate
    from timoe_core.model.bundle import read_bundle
    from timoe_core.recipes.registry import coadapt, train_router

    data, experts = mixture_inputs  # data 2013-2018, experts of 2013-14, 2015-16, 2017-18
    common = {"experts": [experts], "data": data, "out": tmp_path / strategy, "max_steps": 2,
              "batch_size": 4, "device": "cpu", "log_every": 100, "policy": "inclusive"}
    if strategy == "coadapt":
        bundle = coadapt(CoadaptConfig(**common))
    else:
        bundle = train_router(TrainRouterConfig(strategy=strategy, **common))
    b = read_bundle(bundle)
    assert b.router_data_cutoff.isoformat() == "2018-12-31"  # it read every year
    if strategy == "coadapt":  # and so did every expert adapted through it
        assert {r.cutoff.isoformat() for r in b.records} == {"2018-12-31"}
    for when in ("2016-12-31", "2018-06-30"):
        code, out, err = run_cli(capsys, "evaluate", "--model", bundle, "--policy",
                                 "point-in-time", "--query-date", when, "--data", data)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "2018-12-31" in err and "--policy inclusive" in err
    # each year as of its own date: only 2018 comes as late as the router's cutoff
    own = run_evaluate(EvaluateConfig(model=bundle, data=data, policy="point-in-time",
                                      device="cpu")).report
    assert [y for y, v in own["perplexity"].items() if v is not None] == ["2018"]
    code, out, err = run_cli(capsys, "generate", "--model", bundle, "--policy",
                             "point-in-time", "--query-date", "2016", "--prompt", "a")
    assert code == 2 and "2018-12-31" in err
    # as the bundle was trained, inclusive, it still answers; and as of its cutoff too
    for extra in ([], ["--policy", "point-in-time", "--query-date", "2018-12-31"]):
        code, out, err = run_cli(capsys, "evaluate", "--model", bundle, "--query-date", "2016",
                                 "--data", data, *extra)
        assert code == 0, err


@pytest.fixture(scope="module")
def staged_expert(tmp_path_factory):
    """A 2013-2014 expert with its 2013 snapshot."""
    from helpers import make_data_dir

    from timoe_core.config import TrainExpertConfig
    from timoe_core.train import train_expert

    root = tmp_path_factory.mktemp("staged_expert")
    data = make_data_dir(root, years=(2013, 2014), tokens_per_year=1024, vocab_size=128)
    run = train_expert(TrainExpertConfig(year=2013, data=data, out=root / "e", n_layer=1,
                                         n_head=2, n_embd=16, seq_len=32, steps_per_stage=2,
                                         batch_size=2, device="cpu", log_every=100))
    return data, run


def test_a_single_expert_as_of_d_uses_its_snapshot_not_its_final_weights(staged_expert,
                                                                       tmp_path):
    from timoe_core.config import EvaluateConfig
    from timoe_core.errors import TimoeError
    from timoe_core.evaluate.run import run_evaluate

    data, run = staged_expert

    def ev(policy, when, **kw):
        return run_evaluate(EvaluateConfig(model=run, data=data, policy=policy, query_date=when,
                                           device="cpu", **kw)).report

    as_of = ev("point-in-time", "2014-06-01")
    assert as_of["policy"] == "point-in-time"
    assert as_of["artefacts_used"] == [{"name": "2013-2014@2013-12-31",
                                        "data_cutoff": "2013-12-31"}]
    final = ev("inclusive", "2014-06-01")
    assert final["artefacts_used"][0]["data_cutoff"] == "2014-12-31"
    assert as_of["perplexity"]["2013"] != final["perplexity"]["2013"]
    with pytest.raises(TimoeError, match="2013-12-31"):
        ev("point-in-time", "2013-06-30")


def test_a_single_expert_generates_and_exports_only_what_it_knew(staged_expert, tmp_path):
    from timoe_core.config import ExportConfig
    from timoe_core.errors import TimoeError
    from timoe_core.evaluate.models import load_evaluated_model
    from timoe_core.generate import generate_tokens
    from timoe_core.interop.export import export_model
    from timoe_core.model.expert_pool import load_expert, run_dir_artefacts
    from timoe_core.model.run_info import read_run_info

    _, run = staged_expert
    m = load_evaluated_model(run, policy="point-in-time", device="cpu")
    assert m.dated  # `generate` and the lm-eval adapter take the same model
    got = generate_tokens(m.mix, [1, 2], query_date="2014-06", max_new_tokens=6, seed=1)
    snapshot = load_expert(run_dir_artefacts(run, read_run_info(run))[0])
    alone = generate_tokens(snapshot, [1, 2], max_new_tokens=6, seed=1)
    assert got.tokens == alone.tokens
    with pytest.raises(TimoeError, match="2013-12-31"):
        m.eligible_experts("2013-06")
    with pytest.raises(TimoeError, match="not usable as of"):
        export_model(ExportConfig(model=run, format="hf", out=tmp_path / "x",
                                  query_date="2014-06-01"))


# ------------------------------------------------------ 4. batches mix dates


@pytest.fixture(scope="module")
def random_experts(tmp_path_factory):
    from helpers import make_expert_runs

    root = tmp_path_factory.mktemp("leaks_batches")
    make_expert_runs(root / "experts", ["2013-2014", "2015-2016"], vocab_size=50304,
                     n_embd=16, n_layer=1, scale=0.2)
    return root / "experts"


def _items_of(years, n: int):
    from timoe_core.evaluate.tsqa import load_tsqa

    return [it for it in load_tsqa("builtin") if it.year in years][:n]


@pytest.mark.parametrize("policy", ["inclusive", "point-in-time"])
def test_tsqa_items_of_one_date_score_the_same_alone_or_with_other_dates(random_experts,
                                                                          policy):
    from timoe_core.evaluate.models import load_evaluated_model
    from timoe_core.evaluate.tsqa import score_tsqa

    m = load_evaluated_model(random_experts, policy=policy, device="cpu")
    early, late = _items_of({2015}, 40), _items_of({2016}, 40)
    alone = score_tsqa(m, early, batch_items=16)  # each item as of its own date
    together = score_tsqa(m, late + early, batch_items=16)
    assert alone.n == 40 and together.n == 80
    by_question = {(it.question, tuple(it.choices)): s
                   for it, s in zip(together.items, together.scores)}
    assert [by_question[(it.question, tuple(it.choices))] for it in alone.items] == alone.scores


def test_lm_eval_requests_of_one_date_score_the_same_alone_or_with_other_dates(
        random_experts):
    pytest.importorskip("lm_eval")
    from timoe_core.evaluate.harness import TimoeLM
    from timoe_core.evaluate.models import load_evaluated_model

    class Request:
        def __init__(self, context, continuation, doc):
            self.args, self.doc = (context, continuation), doc
            self.task_name, self.doc_id = "t", 0

    m = load_evaluated_model(random_experts, policy="inclusive", device="cpu")
    lm = TimoeLM(m, date_field="year", greedy=False, batch_size=32)

    def requests(items):
        return [Request(it.question, " " + c, {"year": it.year}) for it in items
                for c in it.choices]

    early, late = _items_of({2015}, 20), _items_of({2016}, 20)
    alone = lm.loglikelihood(requests(early))
    together = lm.loglikelihood(requests(late + early))
    assert together[len(alone):] == alone


# ------------------------------------------------ 6. metadata fingerprints the future


def test_an_artefacts_metadata_names_only_the_data_it_read(tmp_path):
    from helpers import make_data_dir

    from timoe_core.config import TrainExpertConfig
    from timoe_core.train import train_expert

    small = {"n_layer": 1, "n_head": 2, "n_embd": 16, "seq_len": 32, "steps_per_stage": 2,
             "batch_size": 2, "device": "cpu", "log_every": 100}
    runs = {}
    for name, years in (("cut", (2013, 2014)), ("more", (2013, 2014, 2015, 2016))):
        data = make_data_dir(tmp_path, years=years, tokens_per_year=1024, vocab_size=128,
                             name=name)
        runs[name] = {
            "expert": train_expert(TrainExpertConfig(year=2013, data=data,
                                                     out=tmp_path / name / "e", **small)),
            "dense": train_expert(TrainExpertConfig(all_years=True, data=data,
                                                    out=tmp_path / name / "d", **small)),
        }
    for rel in ("expert/run.json", "expert/snapshots/2013-12-31/run.json",
                "expert/snapshots/2013-12-31/snapshot.json",
                "dense/snapshots/2013-12-31/run.json"):
        kind, _, inner = rel.partition("/")
        cut = (runs["cut"][kind] / inner).read_bytes()
        assert cut == (runs["more"][kind] / inner).read_bytes(), rel
    meta = json.loads((runs["more"]["dense"] / "snapshots/2014-12-31/run.json").read_text())
    assert sorted(meta["data_files_sha256"]) == [
        "train/2013.bin", "train/2014.bin", "val/2013.bin", "val/2014.bin"]
