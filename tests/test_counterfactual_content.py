"""The proof of point-in-time validity, widened: the text after D changes by CONTENT.

tests/test_counterfactual.py removes the text after D. Here two JSONL corpora hold the
same documents up to D = 2015-12-31 (inside the 2015-2016 slice) and differ after it:
other text, half as many documents again, and the later records interleaved among the
earlier ones. Each is prepared in 2 shards and merged, then the pipeline is built with
the default budgets (one pass per stage; the log-prob cache on, and once with a budget
that builds it): slice experts with snapshots, the dense series, avg, learned-avg and
coadapt. Read as of D, and item by item as of each item's own date up to D, everything
must be bitwise identical: perplexity, TSQA scores, lm-eval `date_field` scores, a seeded
generation, exported bytes, and the sha256 of every artefact with cutoff <= D. Under the
inclusive rule the same comparison differs (the negative control).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from helpers import LOCAL_QA_TASK_YAML, one_thread  # noqa: F401 (fixture)

from timoe_core.config import (
    CoadaptConfig,
    EvaluateConfig,
    ExportConfig,
    PrepareDataConfig,
    TrainExpertConfig,
    TrainRouterConfig,
)
from timoe_core.data.builtin import builtin_documents
from timoe_core.data.manifest import load_manifest
from timoe_core.data.prepare import prepare_data
from timoe_core.evaluate.models import load_evaluated_model
from timoe_core.evaluate.run import run_evaluate
from timoe_core.evaluate.tsqa import load_tsqa, score_tsqa
from timoe_core.generate import generate_tokens
from timoe_core.interop.export import export_model
from timoe_core.recipes.registry import coadapt, train_router
from timoe_core.train import train_expert

try:
    import lm_eval  # noqa: F401 (timoe[eval]: then lm-eval's date_field is checked too)

    HAVE_LM_EVAL = True
except ImportError:
    HAVE_LM_EVAL = False

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

D = "2015-12-31"
END_YEAR = 2018  # slices 2013-2014, 2015-2016, 2017-2018
MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "seq_len": 32}
TRAIN = {"batch_size": 4, "device": "cpu", "log_every": 1000, "eval_batches": 1,
         "cutoff_every": "month"}
MIXTURES = ["avg", "learned-avg", "learned-avg-cached", "coadapt"]


def corpus(path: Path, later_seed: int, later_per_year: int) -> Path:
    """The built-in documents up to 2015 (the same in every corpus), and the documents of
    2016-2018 drawn with `later_seed`, tagged per corpus, shuffled among the earlier ones."""
    early = [{"text": d.text, "date": f"{d.year}-06-15T12:00:00Z"}
             for d in builtin_documents(docs_per_year=6, seed=0) if d.year <= 2015]
    late = [{"text": f"[{later_seed}] {d.text}", "date": f"{d.year}-0{1 + i % 9}-01"}
            for i, d in enumerate(builtin_documents(docs_per_year=later_per_year,
                                                    seed=later_seed))
            if 2016 <= d.year <= END_YEAR]
    rows = early + late
    random.Random(later_seed).shuffle(rows)  # later records interleaved, not appended
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(root: Path, source: Path) -> dict[str, Path]:
    """Data (2 shards, merged), experts, the dense series and every mixture."""
    common = {"source": str(source), "seq_len": 32, "val_fraction": 0.25, "workers": 1,
              "end_year": END_YEAR}
    shards = []
    for k in range(2):
        shards.append(root / f"shard{k}")
        prepare_data(PrepareDataConfig(out=shards[-1], num_shards=2, shard_index=k, **common))
    data = root / "data"
    prepare_data(PrepareDataConfig(merge=shards, out=data))
    experts = root / "experts"
    for s in load_manifest(data).time_slicing().slices:
        train_expert(TrainExpertConfig(year=s.start_year, data=data, out=experts / s.label,
                                       **MODEL, **TRAIN))  # default budgets
    out = {"data": data, "experts": experts,
           "dense": train_expert(TrainExpertConfig(all_years=True, data=data,
                                                   out=root / "dense", **MODEL, **TRAIN))}
    mix = {"experts": [experts], "data": data, **TRAIN}
    out["avg"] = train_router(TrainRouterConfig(strategy="avg", out=root / "avg", **mix))
    out["learned-avg"] = train_router(TrainRouterConfig(strategy="learned-avg",
                                                        out=root / "la", **mix))
    # A budget of several passes: the staged log-prob cache is built and read (kept past its
    # stage, which by default removes it once the stage's router snapshot is saved).
    out["learned-avg-cached"] = train_router(TrainRouterConfig(
        strategy="learned-avg", out=root / "la_cached", steps_per_stage=12,
        keep_stage_checkpoints=True, **mix))
    assert list((root / "la_cached").glob("stages/*/logprob-cache/*/meta.json"))
    out["coadapt"] = coadapt(CoadaptConfig(out=root / "coadapt", **mix))
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("counterfactual_content")
    a = corpus(root / "a.jsonl", later_seed=1, later_per_year=6)
    b = corpus(root / "b.jsonl", later_seed=2, later_per_year=9)  # other text, 1.5x as much
    return {"a": build(root / "a", a), "b": build(root / "b", b)}


def items_up_to_2018():
    items = load_tsqa("builtin")
    return [it for y in range(2013, END_YEAR + 1) for it in [i for i in items if i.year == y][:6]]


def answers(paths: dict[str, Path], name: str, policy: str | None = None) -> dict:
    """Everything read as of D, and as of each item's own date (items up to D)."""
    path, strategy = ((paths["dense"], "dense-series") if name == "dense-series"
                      else (paths[name], None))
    result = run_evaluate(EvaluateConfig(model=path, strategy=strategy, data=paths["data"],
                                         tsqa="builtin", max_items=24, query_date=D,
                                         policy=policy, device="cpu", batch_size=4))
    report = result.report
    m = load_evaluated_model(path, strategy, policy=policy, device="cpu")
    items = items_up_to_2018()
    own = score_tsqa(m, items, batch_items=8)  # every year's items in one call
    own_scores = [s for it, s in zip(own.items, own.scores) if it.year <= 2015]
    gen = generate_tokens(m.mix, [464, 1266], query_date=D, max_new_tokens=6, seed=3)
    out = {"perplexity": {y: v for y, v in report["perplexity"].items() if int(y) <= 2015},
           "tsqa": report["tsqa"], "tsqa_choice_scores": result.tsqa.scores,
           "artefacts": report["artefacts_used"],
           "own_date_scores": own_scores, "generated": gen.tokens}
    if HAVE_LM_EVAL:
        from timoe_core.evaluate.harness import TimoeLM

        class Request:
            def __init__(self, it, choice):
                self.args, self.doc = (it.question, " " + choice), {"year": it.year}
                self.task_name, self.doc_id = "local", 0

        lm = TimoeLM(m, date_field="year", greedy=False, batch_size=32)
        early = [Request(it, c) for it in items for c in it.choices if it.year <= 2015]
        late = [Request(it, c) for it in items for c in it.choices if it.year > 2015]
        scores = lm.loglikelihood(late + early)  # later dates in the same call
        out["lm_eval_date_field"] = scores[len(late):]
        if name == "learned-avg":  # once through lm-eval itself: a local task, date_field
            out["lm_eval_local_task"] = run_evaluate(EvaluateConfig(
                model=path, lm_eval_tasks=["timoe_cf_qa"], policy=policy, device="cpu",
                lm_eval_include_path=local_task(paths["data"].parent, items),
                lm_eval_date_field="year")).report["lm_eval"]["tasks"]
    return out




def local_task(root: Path, items) -> Path:
    """An lm-eval task over the TSQA items dated up to D, each with its own year."""
    qa = root / "cf_qa.jsonl"
    qa.write_text("".join(json.dumps({"question": it.question, "choices": [c.lstrip() for c in it.choices],
                                      "answer": it.answer, "year": it.year}) + "\n"
                          for it in items if it.year <= 2015), encoding="utf-8")
    tasks = root / "cf_tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "cf_qa.yaml").write_text(LOCAL_QA_TASK_YAML.format(name="timoe_cf_qa", path=qa),
                                      encoding="utf-8")
    return tasks


@pytest.mark.parametrize("name", [*MIXTURES, "dense-series"])
def test_an_answer_as_of_d_does_not_depend_on_what_was_written_after_it(builds, name):
    a, b = answers(builds["a"], name), answers(builds["b"], name)
    assert len([v for v in a["perplexity"].values() if v is not None]) >= 2
    assert a["tsqa"]["n"] == 24 and len(a["own_date_scores"]) == 18
    assert len(a["tsqa_choice_scores"]) == 24
    if HAVE_LM_EVAL and name == "learned-avg":
        assert a["lm_eval_local_task"]["timoe_cf_qa"]["acc"] is not None
    for key in a:
        assert a[key] == b[key], key
    assert a["artefacts"] and all(x["data_cutoff"] <= D for x in a["artefacts"])


def _artefacts_up_to_d(paths: dict[str, Path]) -> dict[str, str]:
    """sha256 of every file of every artefact with cutoff <= D (weights and their
    metadata), and of every token and index file of the years <= D."""
    out = {}
    for split in ("train", "val"):
        for y in (2013, 2014, 2015):
            for ext in ("bin", "idx"):
                f = paths["data"] / split / f"{y}.{ext}"
                out[f"data/{split}/{y}.{ext}"] = sha(f) if f.exists() else ""
    # (not metrics.jsonl: wall-clock timings; not config.yaml: the paths given)
    for f in ("model.safetensors", "run.json"):
        out[f"experts/2013-2014/{f}"] = sha(paths["experts"] / "2013-2014" / f)
    for name, root in (("experts/2013-2014", paths["experts"] / "2013-2014"),
                       ("experts/2015-2016", paths["experts"] / "2015-2016"),
                       ("dense", paths["dense"])):
        for snap in sorted((root / "snapshots").iterdir()):
            if snap.name <= D:
                for f in ("model.safetensors", "run.json", "snapshot.json"):
                    out[f"{name}/{snap.name}/{f}"] = sha(snap / f)
    for name in MIXTURES[1:]:
        for router in sorted((paths[name] / "routers").iterdir()):
            if router.name <= D:
                out[f"{name}/routers/{router.name}"] = sha(router / "router.safetensors")
    for adapted in sorted((paths["coadapt"] / "experts").iterdir()):
        cutoff = adapted.name.split("@")[1].split("+")[0]
        if cutoff <= D:
            for f in ("model.safetensors", "run.json"):
                out[f"coadapt/{adapted.name}/{f}"] = sha(adapted / f)
    return out


def test_every_artefact_with_cutoff_up_to_d_is_byte_identical(builds):
    a, b = _artefacts_up_to_d(builds["a"]), _artefacts_up_to_d(builds["b"])
    assert a == b
    # the documents up to D are dated June 15: with monthly cutoffs (the default) 2015's
    # snapshot is its June's, the latest artefact with cutoff <= D of each run
    assert "dense/2015-06-30/model.safetensors" in a
    assert "experts/2015-2016/2015-06-30/model.safetensors" in a
    assert any(k.startswith("coadapt/") for k in a)
    # the merged shards of years after D do differ: the corpora really differ
    assert sha(builds["a"]["data"] / "train" / "2016.bin") != sha(
        builds["b"]["data"] / "train" / "2016.bin")


def test_the_export_as_of_d_is_byte_identical(builds, tmp_path):
    files = {}
    for name, paths in builds.items():
        out = tmp_path / name
        export_model(ExportConfig(model=paths["experts"], format="hf", out=out, query_date=D))
        files[name] = {str(f.relative_to(out)): sha(f) for f in sorted(out.rglob("*"))
                       if f.is_file() and f.suffix in (".safetensors", ".json")}
    assert files["a"] == files["b"]
    assert any(k.endswith("model.safetensors") for k in files["a"])


def test_the_inclusive_rule_leaks_and_the_comparison_shows_it(builds):
    a = answers(builds["a"], "avg", policy="inclusive")
    b = answers(builds["b"], "avg", policy="inclusive")
    assert a["perplexity"] != b["perplexity"] and a["own_date_scores"] != b["own_date_scores"]
    # the 2015-2016 expert that answers has read text after D (its final: monthly cutoffs,
    # the month of its last 2016 document)
    assert any(x["name"].startswith("2015-2016@") and x["data_cutoff"] > D
               for x in a["artefacts"]), a["artefacts"]
