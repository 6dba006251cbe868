"""`timoe evaluate` / `timoe compare`: perplexity, reports, plots, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
from datetime import date
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import invoke_cli
from pydantic import BaseModel, ConfigDict

from timoe_core.config import MixtureOptions
from timoe_core.errors import TimoeError
from timoe_core.evaluate import (
    compare_models,
    compare_table,
    evaluate_perplexity,
    evaluation_report,
    load_evaluated_model,
    perplexity_matrix,
    plot_compare,
    plot_report,
    write_report,
)
from timoe_core.evaluate.intervals import wilson_interval
from timoe_core.evaluate.models import MixtureModel
from timoe_core.evaluate.report import fmt_ppl, rate_cell
from timoe_core.evaluate.tsqa import load_tsqa
from timoe_core.model.gpt import GPT, GPTConfig
from timoe_core.model.mixture import TiMoE
from timoe_core.timeslices import parse_query_date

GPT2 = {"name": "gpt2", "vocab_size": 50257, "eot_token": 50256}
TINY = GPTConfig(vocab_size=50304, block_size=32, n_layer=1, n_head=2, n_embd=32)
YEARS = list(range(2013, 2025))
SEQ_LEN = 16
VAL_TOKENS = {y: 16 * 5 + 1 + (y % 3) for y in YEARS}  # 5 windows a year, ragged tails
# Most tests here state the paper code's rule (a slice answers once it has started).
INCLUSIVE = MixtureOptions(policy="inclusive")


# ------------------------------------------------------------------ builders


def make_data_dir(root: Path, years=YEARS, vocab_size=50257) -> Path:
    """The shared builder (helpers.make_data_dir): 200 random training tokens a year,
    VAL_TOKENS held out."""
    return helpers.make_data_dir(root.parent, years, tokens_per_year=200, seq_len=SEQ_LEN,
                                 val_tokens_per_year=VAL_TOKENS, pattern="random",
                                 vocab_size=vocab_size, name=root.name)


def make_run(run_dir: Path, kind: str, label: str, seed: int, cfg: GPTConfig = TINY) -> Path:
    torch.manual_seed(seed)
    return helpers.make_run(run_dir, kind, label, cfg, tokenizer=GPT2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data for 2013-2024, six 2-year experts, a dense run."""
    root = tmp_path_factory.mktemp("world")
    data = make_data_dir(root / "data")
    experts = root / "experts"
    for k, start in enumerate(range(2013, 2025, 2)):
        make_run(experts / f"{start}-{start + 1}", "expert", f"{start}-{start + 1}", seed=k)
    dense = make_run(root / "dense", "dense", "2013-2024", seed=99)
    return {"root": root, "data": data, "experts": experts, "dense": dense}


def mixture(world, first_year=2013, strategy="avg") -> MixtureModel:
    dirs = [d for d in sorted(world["experts"].iterdir()) if int(d.name[:4]) >= first_year]
    return MixtureModel(TiMoE.from_expert_dirs(dirs, strategy=strategy, options=INCLUSIVE),
                        name="avg (test)")


def make_bundle(world, out: Path, first_year=2013, strategy="avg", drop_after=None) -> Path:
    """A bundle over copies of the experts; `drop_after`: delete later experts' weights."""
    runs = out / "runs"
    for d in sorted(world["experts"].iterdir()):
        if int(d.name[:4]) >= first_year:
            shutil.copytree(d, runs / d.name)
    TiMoE.from_expert_dirs(runs, strategy=strategy, options=INCLUSIVE).save_bundle(out / "bundle")
    if drop_after is not None:
        for d in runs.iterdir():
            if int(d.name[:4]) > drop_after:
                (d / "model.safetensors").unlink()
    return out / "bundle"


# ------------------------------------------------------------- perplexity


def _independent_perplexity(gpt: GPT, data: Path, year: int, seq_len: int) -> float:
    tokens = np.fromfile(data / "val" / f"{year}.bin", dtype=np.uint16).astype(np.int64)
    n = (len(tokens) - 1) // seq_len
    rows = torch.tensor(np.stack([tokens[j * seq_len: j * seq_len + seq_len + 1]
                                  for j in range(n)]))
    with torch.no_grad():
        logits = gpt(rows[:, :-1])[0]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1))
    return math.exp(nll.item())


def test_perplexity_is_exp_mean_nll_computed_independently(world):
    model = load_evaluated_model(world["dense"], device="cpu")
    res = evaluate_perplexity(model, world["data"], batch_size=3)  # partial last batches
    assert res.seq_len == SEQ_LEN  # min(block 32, data seq_len 16)
    for year in (2013, 2019, 2024):
        want = _independent_perplexity(model.gpt, world["data"], year, SEQ_LEN)
        got = res.years[year]
        assert got.windows == 5 and got.tokens == 5 * SEQ_LEN
        assert got.perplexity == pytest.approx(want, rel=1e-5)
    total = sum(r.nll * r.tokens for r in res.years.values()) / sum(
        r.tokens for r in res.years.values())
    assert res.overall() == pytest.approx(math.exp(total))


def test_mixture_perplexity_is_exp_mean_nll_of_the_expert_average(world):
    """As of 2016 the avg mixture is log(mean of the 2013-2014 and 2015-2016 experts' P)."""
    from timoe_core.model.weights import load_expert

    model = mixture(world)
    res = evaluate_perplexity(model, world["data"], years=[2016, 2021], batch_size=4)
    experts = [load_expert(world["experts"] / label)[0] for label in ("2013-2014", "2015-2016")]
    tokens = np.fromfile(world["data"] / "val" / "2016.bin", dtype=np.uint16).astype(np.int64)
    rows = torch.tensor(np.stack([tokens[j * SEQ_LEN: (j + 1) * SEQ_LEN + 1] for j in range(5)]))
    with torch.no_grad():
        lps = torch.stack([F.log_softmax(e(rows[:, :-1])[0], -1) for e in experts])
    mix = torch.logsumexp(lps, 0) - math.log(2)
    nll = -mix.gather(-1, rows[:, 1:, None]).mean()
    assert res.years[2016].perplexity == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert res.years[2021].windows == 5 and set(res.years) == {2016, 2021}


def test_max_docs_subsamples_the_same_windows_every_time(world):
    model = load_evaluated_model(world["dense"], device="cpu")
    a = evaluate_perplexity(model, world["data"], max_docs=2, batch_size=4)
    b = evaluate_perplexity(model, world["data"], max_docs=2, batch_size=1)
    assert all(r.windows == 2 for r in a.years.values())
    for y in YEARS:
        assert a.years[y].perplexity == pytest.approx(b.years[y].perplexity, rel=1e-6)


def test_each_window_is_read_as_of_its_own_year(world):
    """Mixed-date batches give what evaluating each year as of itself gives."""
    model = mixture(world)
    mixed = evaluate_perplexity(model, world["data"], max_docs=2, batch_size=5)
    for y in (2013, 2016, 2024):
        alone = evaluate_perplexity(model, world["data"], query_date=str(y), years=[y],
                                    max_docs=2)
        assert mixed.years[y].perplexity == pytest.approx(alone.years[y].perplexity, rel=1e-6)


def test_years_before_the_first_expert_are_null_with_a_reason(world):
    model = mixture(world, first_year=2017)  # experts 2017-2018 .. 2023-2024
    res = evaluate_perplexity(model, world["data"], max_docs=1)
    for y in (2013, 2014, 2015, 2016):
        assert res.years[y].perplexity is None
        assert "2017-01-01" in res.years[y].reason
    assert res.years[2017].perplexity is not None

    matrix, per_year = perplexity_matrix(model, world["data"], max_docs=1)
    values = matrix.values()
    assert matrix.query_dates[0] == "2013" and all(v is None for v in values[0])
    assert all(v is not None for v in values[YEARS.index(2020)])
    assert "2013" in matrix.to_dict()["null_reasons"]
    # The diagonal is the own-date perplexity.
    for i, y in enumerate(YEARS):
        assert values[i][i] == per_year.years[y].perplexity


def test_query_date_selects_experts_and_never_loads_later_ones(world, tmp_path):
    # The weights of every expert after 2016 are gone: evaluating as of 2016 must not care.
    bundle = make_bundle(world, tmp_path, drop_after=2016)
    out = tmp_path / "r.json"
    r = invoke_cli("evaluate", "--model", str(bundle), "--query-date", "2016", "--data",
                str(world["data"]), "--tsqa", str(_tsqa_file(tmp_path / "qa.json")),
                "--max-docs", "1", "--device", "cpu", "--json", str(out))
    assert r.exit_code == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["eligible_experts"] == ["2013-2014", "2015-2016"]
    assert report["loaded_experts"] == ["2013-2014", "2015-2016"]
    assert report["tsqa"]["n"] == 4 and all(v is not None for v in report["perplexity"].values())
    r = invoke_cli("evaluate", "--model", str(bundle), "--query-date", "2014-06", "--tsqa",
                str(tmp_path / "qa.json"), "--device", "cpu", "--json", str(out))
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["eligible_experts"] == ["2013-2014"]
    # Own dates: a 2019 question may use 2017-2018, whose weights are gone: a clear error.
    r = invoke_cli("evaluate", "--model", str(bundle), "--tsqa", str(tmp_path / "qa.json"),
                "--device", "cpu")
    assert r.exit_code == 2 and "weights of expert 2017-2018 are missing" in r.stderr


def test_eligible_experts_follow_the_policy(world):
    model = load_evaluated_model(world["experts"], policy="strict", device="cpu")
    assert model.eligible_experts("2016") == ["2013-2014", "2015-2016"]
    assert model.eligible_experts("2017-06") == ["2013-2014", "2015-2016"]
    inclusive = load_evaluated_model(world["experts"], policy="inclusive", device="cpu")
    assert inclusive.eligible_experts("2017-06") == [
        "2013-2014", "2015-2016", "2017-2018"]


def test_query_date_before_every_slice_names_the_first_date(world):
    model = mixture(world, first_year=2015)
    with pytest.raises(TimoeError, match="first query date with an eligible expert is 2015-01-01"):
        evaluate_perplexity(model, world["data"], query_date="2014")


def test_tokenizer_mismatch_names_the_fields(world, tmp_path):
    other = make_data_dir(tmp_path / "other", vocab_size=1000, years=[2013])
    model = load_evaluated_model(world["dense"], device="cpu")
    with pytest.raises(TimoeError) as e:
        evaluate_perplexity(model, other)
    assert "tokenizer.vocab_size=50257" in str(e.value)
    assert "vocab_size=1000" in str(e.value) and "eot_token" in str(e.value)


# ---------------------------------------------------------------- loading


def test_strategies_on_run_dirs(world):
    dense = load_evaluated_model(world["dense"], device="cpu")
    assert dense.strategy == "dense" and dense.eligible_experts("2015") == ["dense 2013-2024"]
    single = load_evaluated_model(world["experts"], "expert:2016", device="cpu")
    assert single.strategy == "expert:2015-2016"
    assert single.eligible_experts(None) == ["2015-2016"]
    again = load_evaluated_model(world["experts"] / "2015-2016", "expert:2015", device="cpu")
    assert again.strategy == "expert:2015-2016"
    with pytest.raises(TimoeError, match="unknown strategy 'best'"):
        load_evaluated_model(world["dense"], "best")
    with pytest.raises(TimoeError, match="does not cover 2019"):
        load_evaluated_model(world["experts"] / "2015-2016", "expert:2019")
    with pytest.raises(TimoeError, match="no expert .* covers 2030"):
        load_evaluated_model(world["experts"], "expert:2030")
    with pytest.raises(TimoeError, match="needs a TiMoE bundle"):
        load_evaluated_model(world["dense"], "learned-avg")
    with pytest.raises(TimoeError, match="without a router"):
        load_evaluated_model(world["experts"], "learned-avg")


def test_bundle_strategies(world, tmp_path):
    avg = make_bundle(world, tmp_path / "a")
    assert load_evaluated_model(avg, device="cpu").strategy == "avg"
    with pytest.raises(TimoeError, match="built with strategy avg and has no learned-avg router"):
        load_evaluated_model(avg, "learned-avg")
    with pytest.raises(TimoeError, match="no coadapt router"):
        load_evaluated_model(avg, "coadapt")
    with pytest.raises(TimoeError, match="not a dense run dir"):
        load_evaluated_model(avg, "dense")
    single = load_evaluated_model(avg, "expert:2018", device="cpu")
    assert single.strategy == "expert:2017-2018" and single.eligible_experts("2014") == [
        "2017-2018"]
    learned = make_bundle(world, tmp_path / "l", strategy="learned-avg")
    m = load_evaluated_model(learned, device="cpu")
    assert m.strategy == "learned-avg" and m.mix.router is not None
    as_avg = load_evaluated_model(learned, "avg", device="cpu")
    assert as_avg.strategy == "avg" and as_avg.mix.labels == m.mix.labels
    with pytest.raises(TimoeError, match="built with strategy learned-avg and has no coadapt"):
        load_evaluated_model(learned, "coadapt")


# ------------------------------------------------------------ JSON / PNG


class _ErrorRates(BaseModel):
    model_config = ConfigDict(extra="forbid")
    past: float
    future: float
    irrelevant: float


class _TSQA(BaseModel):
    n: int
    accuracy: float
    accuracy_norm: float
    error_rates: _ErrorRates


class _Report(BaseModel):
    """The `evaluate --json` schema of docs/cli.md (extra keys allowed)."""

    strategy: str
    query_date: str | None
    policy: str
    eligible_experts: list[str]
    perplexity: dict[str, float | None]
    tsqa: _TSQA


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _tsqa_file(path: Path) -> Path:
    items = []
    for y in (2014, 2016, 2019, 2023):
        items.append({"question": f"In {y} the mayor of Lorvik was", "year": y,
                      "choices": [" Anna Berg", " Carl Dahl", " Eva Frost", " Gus Holm"],
                      "answer": y % 4, "labels": ["past", "future", "irrelevant", "past"]})
        items[-1]["labels"][y % 4] = "correct"
    # one asked in the months after its answer changed that year
    items[1].update(date=f"{items[1]['year']}-08-31", since=f"{items[1]['year']}-07-13")
    path.write_text(json.dumps(items))
    return path


def test_cli_json_validates_against_the_schema_and_png_is_real(world, tmp_path):
    qa = _tsqa_file(tmp_path / "qa.json")
    out = tmp_path / "out"
    # The installed entry point, as users run it.
    r = subprocess.run(
        [sys.executable, "-m", "timoe_cli", "evaluate", "--model", str(world["dense"]),
         "--data", str(world["data"]), "--tsqa", str(qa), "--json", str(out / "eval.json"),
         "--plot", str(out / "eval.png"), "--max-docs", "2", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "250"},  # wide enough that no row label folds
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "eval.json").read_text())
    parsed = _Report.model_validate(report)
    assert set(parsed.perplexity) == {str(y) for y in YEARS}
    t = parsed.tsqa
    assert t.n == 4
    assert t.accuracy + t.error_rates.past + t.error_rates.future + t.error_rates.irrelevant \
        == pytest.approx(1.0)
    after = report["tsqa"]["after_change"]  # the stale-answer measure: 1 item qualifies
    assert after["n"] == 1 and after["stale"] in (0, 1)
    assert after["stale_interval"] == pytest.approx(list(wilson_interval(after["stale"], 1)))
    assert "after a change that year" in r.stdout
    assert (out / "eval.config.yaml").is_file()  # the resolved config beside the JSON
    w, h = _png_size(out / "eval.png")
    assert w >= 400 and h >= 300 and (out / "eval.png").stat().st_size > 10_000
    assert "held-out perplexity" in r.stdout and "temporal QA" in r.stdout
    # `eval` is the same command.
    r2 = invoke_cli("eval", "--model", str(world["dense"]), "--tsqa", str(qa), "--device", "cpu")
    assert r2.returncode == 0, r2.stderr


def test_matrix_report_and_heatmap(world, tmp_path):
    model = mixture(world, first_year=2015)
    matrix, per_year = perplexity_matrix(model, world["data"], max_docs=1)
    report = evaluation_report(model, model_path="mix", query_date=None, perplexity=per_year,
                               matrix=matrix)
    assert report["matrix"]["perplexity"][0] == [None] * len(YEARS)  # as of 2013: no expert
    assert report["perplexity"]["2013"] is None
    assert report["eligible_by_year"]["2016"] == ["2015-2016"]
    write_report(tmp_path / "m.json", report)
    assert json.loads((tmp_path / "m.json").read_text())["matrix"]["data_years"][0] == "2013"
    plot_report(tmp_path / "m.png", report)
    w, h = _png_size(tmp_path / "m.png")
    assert w > 400 and h > 300


# ---------------------------------------------------------------- bad input


def test_cli_bad_inputs_exit_2_with_one_line(world, tmp_path):
    bad_qa = tmp_path / "bad.json"
    bad_qa.write_text(json.dumps([
        {"question": "Q?", "choices": [" a", " b", " c", " d"], "answer": 0,
         "labels": ["correct", "past", "future", "irrelevant"], "year": 2015},
        {"question": "Q?", "choices": [" a", " b", " c"], "answer": 0,
         "labels": ["correct", "past", "future"], "year": 2015},
    ]))
    no_labels = tmp_path / "nolabels.jsonl"
    no_labels.write_text(json.dumps({"question": "Q?", "choices": [" a", " b", " c", " d"],
                                     "answer": 0, "year": 2015}) + "\n")
    other = make_data_dir(tmp_path / "other", vocab_size=1000, years=[2013])
    bundle = make_bundle(world, tmp_path / "b", first_year=2015)
    m = ["--model", str(world["dense"]), "--device", "cpu"]
    cases = [
        (["--strategy", "best", "--tsqa", str(bad_qa)], "unknown strategy 'best'"),
        (["--tsqa", str(bad_qa)], "item 1, field 'choices': has 3 choices, expected 4"),
        (["--tsqa", str(no_labels)], "item 0, field 'labels': is missing"),
        (["--data", str(other)], "vocab_size"),
        (["--query-date", "2016-13", "--tsqa", "builtin"], "month 13"),
        ([], "nothing to evaluate"),
        (["--tsqa", "builtin", "--plot", str(tmp_path / "p.jpg")], "must name a .png"),
    ]
    for extra, needle in cases:
        r = invoke_cli("evaluate", *m, *extra)
        assert r.returncode == 2, (extra, r.stderr)
        assert needle in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    b = ["--model", str(bundle), "--device", "cpu"]
    for extra, needle in [
        (["--strategy", "learned-avg", "--tsqa", "builtin"], "no learned-avg router"),
        (["--query-date", "2014", "--tsqa", "builtin"],
         "the first query date with an eligible expert is 2015-01-01"),
    ]:
        r = invoke_cli("evaluate", *b, *extra)
        assert r.returncode == 2 and needle in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.png"))  # nothing half-written


# ------------------------------------------------------------------ compare


def test_compare_models_side_by_side(world, tmp_path):
    qa = _tsqa_file(tmp_path / "qa.json")
    bundle = make_bundle(world, tmp_path, first_year=2015)
    entries = [str(world["dense"]), f"{world['experts']}:expert:2016", str(bundle),
               f"{bundle}:expert:2024"]
    res = compare_models(entries, world["data"], str(qa), max_docs=1, device="cpu",
                         policy="inclusive")
    assert [m["entry"] for m in res["models"]] == entries
    assert [m["strategy"] for m in res["models"]] == ["dense", "expert:2015-2016", "avg",
                                                      "expert:2023-2024"]
    # The bundle starts in 2015: 2013 and 2014 are left out of every model's mean.
    assert res["common_years"] == [str(y) for y in YEARS if y >= 2015]
    assert res["models"][2]["perplexity"]["2013"] is None
    for m in res["models"]:
        common = [m["perplexity"][y] for y in res["common_years"]]
        assert m["perplexity_mean"] == pytest.approx(sum(common) / len(common))
        assert m["tsqa"]["n"] == 3  # the 2014 question: no bundle expert before 2015
    assert res["common_items"] == 3
    assert res["models"][0]["tsqa_own"]["n"] == 4 and "tsqa_own" not in res["models"][2]
    assert [m["label"] for m in res["models"]] == ["dense", "experts:expert:2016", "bundle",
                                                   "bundle:expert:2024"]
    headers, rows = compare_table(res)
    assert headers == ["", "dense", "experts:expert:2016", "bundle", "bundle:expert:2024"]
    names = [r[0] for r in rows]
    n_common = len(res["common_years"])
    # under the inclusive policy no model is point-in-time: every perplexity row says so
    leaky = f"ppl, mean of {n_common} years [95% CI], NOT point-in-time (read later years)"
    assert names[:3] == ["strategy", leaky, "ppl 2013, not point-in-time"]
    assert "future err" in names and not any(n.endswith(", point-in-time") for n in names)
    assert rows[names.index("ppl 2013, not point-in-time")][3] == "—"
    assert rows[names.index("QA items")][1] == "3"
    # one window a year (max_docs=1): no interval to show, and none is made up
    assert res["models"][0]["perplexity_mean_interval"] is None
    assert rows[names.index(leaky)][1] == (fmt_ppl(res["models"][0]["perplexity_mean"])
                                           + " [no CI: a year has 1 window]")
    plot_compare(tmp_path / "c.png", res)
    w, h = _png_size(tmp_path / "c.png")
    assert w > 600 and h > 300


def test_compare_cli(world, tmp_path):
    qa = _tsqa_file(tmp_path / "qa.json")
    r = invoke_cli("compare", "--model", str(world["dense"]), "--model",
                f"{world['experts']}:expert:2020", "--data", str(world["data"]), "--tsqa",
                str(qa), "--max-docs", "1", "--device", "cpu", "--json",
                str(tmp_path / "c.json"), "--plot", str(tmp_path / "c.png"))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "c.json").read_text())
    assert [m["strategy"] for m in res["models"]] == ["dense", "expert:2019-2020"]
    assert (tmp_path / "c.config.yaml").is_file()
    _png_size(tmp_path / "c.png")
    r = invoke_cli("compare", "--model", f"{world['dense']}:bogus", "--tsqa", str(qa))
    assert r.returncode == 2 and "unknown strategy 'bogus'" in r.stderr
    r = invoke_cli("compare", "--model", str(tmp_path / "nope"), "--tsqa", str(qa))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_dates_are_parsed_as_period_ends():
    assert parse_query_date("2016") == date(2016, 12, 31)


def test_plots_show_the_whole_qa_breakdown_and_a_log_scaled_readable_heatmap(tmp_path):
    from matplotlib.colors import LogNorm

    from timoe_core.evaluate.plots import plot_matrix

    def qa(acc, past, fut):
        by_year = {"2015": {"n": 2, "accuracy": 0.5, "error_rates": {"past": 0.5, "future": 0.0,
                                                                    "irrelevant": 0.0}}}
        return {"accuracy": acc, "error_rates": {"past": past, "future": fut,
                                                 "irrelevant": round(1 - acc - past - fut, 6)},
                "by_year": by_year}

    res = {"models": [{"entry": "a", "tsqa": qa(0.46, 0.35, 0.04), "perplexity": None},
                      {"entry": "b", "tsqa": qa(0.54, 0.16, 0.23), "perplexity": None}]}
    fig = plot_compare(tmp_path / "qa.png", res, panels=("qa",))
    overall = fig.axes[0]
    texts = {t.get_text() for t in overall.texts}
    assert {"46", "35", "15", "54", "16", "23", "7"} <= texts  # every segment, in %
    assert [t.get_text() for t in overall.get_legend().get_texts()] == [
        "correct", "past", "future", "irrelevant"]
    stacked = sorted(round(p.get_y() + p.get_height(), 6) for p in overall.patches)
    assert stacked[-2:] == [1.0, 1.0]  # each bar sums to 100 %
    assert len(fig.subfigs[1].axes) >= 2  # the per-question-year panels, one per model
    assert _png_size(tmp_path / "qa.png")[1] > 400

    years = ["2013", "2014"]
    fig = plot_matrix(tmp_path / "m.png", {"data_years": years, "query_dates": years,
                                            "perplexity": [[936.0, 24061.0], [1200.0, None]]},
                      "t")
    ax = fig.axes[0]
    assert isinstance(ax.images[0].norm, LogNorm)
    colors = {t.get_text(): t.get_color() for t in ax.texts}
    assert colors["936"] == "black" and colors["24,061"] == "white" and colors["—"] == "black"


# ---------------------------------------------------- stale answers by cutoffs (demo)


def test_stale_answers_from_year_end_artefacts_are_the_same_both_ways(world, tmp_path):
    """Experts whose only cutoffs are year ends answer from the same artefacts with
    --answer-cutoffs year and month: the two columns agree exactly, and no claim is made."""
    from timoe_core.config import DemoConfig
    from timoe_core.demo import demo_settings, stale_by_cutoffs, stale_table
    from timoe_core.evaluate.tsqa import asked_after_change

    s = demo_settings(DemoConfig(out=tmp_path / "demo", device="cpu")).model_copy(
        update={"eval_items": 200})
    stale = stale_by_cutoffs(s, [("TiMoE avg", f"{world['experts']}:avg")])
    after = [it for it in load_tsqa("builtin", max_items=200) if asked_after_change(it)]
    assert stale["asked_after_change"] == len(after) > 20
    # the first cutoff is 2014-12-31: items of 2013-2014 have no artefact to answer from
    assert stale["items"] == sum(it.year >= 2015 for it in after)
    m = stale["models"]["TiMoE avg"]
    assert m["yearly"]["n"] == m["monthly"]["n"] == stale["items"]
    assert m["yearly"]["counts"] == m["monthly"]["counts"]
    assert m["difference"] == 0.0
    lo, hi = m["interval"]
    assert lo < 0 < hi
    assert stale["verdict"] == "within-noise" and "no claim" in stale["claim"]
    _, rows = stale_table(stale)
    assert rows[0][:3] == ["TiMoE avg", rate_cell(m["yearly"]["stale"], stale["items"]),
                           rate_cell(m["monthly"]["stale"], stale["items"])]
    assert rows[0][3].startswith("+0.0 pts [")


def test_the_stale_claim_is_only_what_the_intervals_support():
    from timoe_core.demo import stale_line, stale_verdict
    from timoe_core.evaluate.intervals import newcombe_difference

    def model(k_yearly, k_monthly, n=100):
        return {"interval": list(newcombe_difference(k_yearly, n, k_monthly, n))}

    clear, close, worse = model(60, 20), model(30, 28), model(10, 40)
    assert clear["interval"][0] > 0 and close["interval"][0] < 0 < close["interval"][1]
    assert stale_verdict({"avg": clear, "dense series": clear}) == "fewer"
    assert stale_verdict({"avg": clear, "dense series": close}) == "within-noise"
    assert stale_verdict({"avg": clear, "dense series": worse}) == "more"
    assert "fewer stale answers" in stale_line("fewer", 100)
    assert "no claim either way" in stale_line("within-noise", 100)
    assert "more stale answers" in stale_line("more", 100)
