"""Cutoffs by period at query time: as of any day, the latest artefact with cutoff <= it,
the staleness `evaluate --json` reports, and --answer-cutoffs (answer from year or quarter
ends only, as a yearly or quarterly build would)."""

from __future__ import annotations

import json
from datetime import date

import pytest
from helpers import make_data_dir, one_thread, run_cli  # noqa: F401 (fixture)

from timoe_core.config import TrainExpertConfig
from timoe_core.model import point_in_time
from timoe_core.model.expert_pool import records_from_run_dirs
from timoe_core.train import train_expert

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def monthly(tmp_path_factory):
    """A slice expert of 2013-2014 with monthly cutoffs, on documents dated across each
    year; returns (data dir, run dir, the cutoffs of its artefacts)."""
    root = tmp_path_factory.mktemp("monthly")
    data = make_data_dir(root, years=(2013, 2014), vocab_size=512, doc_dates="spread")
    run = train_expert(TrainExpertConfig(
        year=2013, data=data, out=root / "run", n_layer=1, n_head=2, n_embd=16, seq_len=32,
        batch_size=4, steps_per_stage=1, device="cpu", log_every=100, eval_batches=1,
        cutoff_every="month"))
    info = json.loads((run / "run.json").read_text())
    cutoffs = [s["data_cutoff"] for s in info["snapshots"]] + [info["data_cutoff"]]
    return data, run, cutoffs


def _latest(cutoffs: list[str], when: str) -> str:
    return max(c for c in cutoffs if c <= when)


def test_as_of_any_day_the_latest_artefact_with_cutoff_on_or_before_it(monthly):
    _, run, cutoffs = monthly
    assert len(cutoffs) >= 20 and all(c == _latest(cutoffs, c) for c in cutoffs)
    records = records_from_run_dirs([run])
    for when in ("2013-03-14", "2013-07-31", "2013-08-01", "2014-02-28", "2014-12-30",
                 "2014-12-31", "2015-06-01"):
        (chosen,) = point_in_time.select_artefacts(records, date.fromisoformat(when),
                                                   "point-in-time")
        assert chosen.cutoff.isoformat() == _latest(cutoffs, when)
        for every in ("quarter", "year"):
            grid = point_in_time.select_artefacts(records, date.fromisoformat(when),
                                                  "point-in-time", every)
            # as a build with cutoffs at every such period end would answer: what was in
            # effect at the last one on or before the date
            period_end = point_in_time.answer_date(date.fromisoformat(when), every).isoformat()
            expected = [c for c in cutoffs if c <= period_end]
            assert [r.cutoff.isoformat() for r in grid] == ([max(expected)] if expected else [])
    assert point_in_time.staleness_days(date(2014, 8, 15), [date(2013, 12, 31),
                                                          date(2014, 7, 31)]) == 15


@pytest.mark.parametrize(("when", "every", "expected"), [
    ("2014-07-15", "any", "2014-07-15"),
    ("2014-07-15", "month", "2014-06-30"),
    ("2014-07-31", "month", "2014-07-31"),
    ("2014-03-01", "month", "2014-02-28"),
    ("2016-03-01", "month", "2016-02-29"),
    ("2014-07-15", "quarter", "2014-06-30"),
    ("2014-06-30", "quarter", "2014-06-30"),
    ("2014-01-05", "quarter", "2013-12-31"),
    ("2014-12-30", "year", "2013-12-31"),
    ("2014-12-31", "year", "2014-12-31"),
])
def test_answer_date_is_the_last_period_end_on_or_before_the_query(when, every, expected):
    got = point_in_time.answer_date(date.fromisoformat(when), every)
    assert got.isoformat() == expected and got <= date.fromisoformat(when)


def test_answer_cutoffs_use_the_artefact_in_effect_at_the_period_end(monthly):
    """A period end with no artefact of its own (its stage brought nothing new) answers
    from the latest earlier one, as a build cut at that period end would: the rule moves
    the query date back, it does not skip to an artefact whose own cutoff is a period end."""
    _, run, cutoffs = monthly
    records = [r for r in records_from_run_dirs([run]) if r.cutoff != date(2013, 12, 31)]
    (chosen,) = point_in_time.select_artefacts(records, date(2014, 2, 10), "point-in-time",
                                               "year")
    assert chosen.cutoff == max(r.cutoff for r in records if r.cutoff < date(2013, 12, 31))
    assert point_in_time.first_usable_date(records, "point-in-time", "year") == date(2013, 12, 31)
    assert point_in_time.first_usable_date(records, "point-in-time", "month") == min(
        r.cutoff for r in records)


@pytest.mark.parametrize("answer_cutoffs", ["any", "quarter", "year"])
def test_evaluate_json_reports_cutoffs_used_and_staleness(capsys, monthly, tmp_path,
                                                          answer_cutoffs):
    data, run, cutoffs = monthly
    when = "2014-08-15"
    out = tmp_path / "r.json"
    code, _, err = run_cli(capsys, "evaluate", "--model", run, "--policy", "point-in-time",
                           "--data", data, "--query-date", when, "--device", "cpu",
                           "--answer-cutoffs", answer_cutoffs, "--json", out, "--max-docs", "4")
    assert code == 0, err
    report = json.loads(out.read_text())
    latest = _latest(cutoffs, point_in_time.answer_date(date.fromisoformat(when),
                                                        answer_cutoffs).isoformat())
    assert latest == {"any": "2014-07-31", "quarter": "2014-06-30",
                      "year": "2013-12-31"}[answer_cutoffs]
    assert report["artefacts_used"] == [{"name": f"2013-2014@{latest}", "data_cutoff": latest}]
    assert report["staleness_days"] == (date(2014, 8, 15) - date.fromisoformat(latest)).days
    assert report["answer_cutoffs"] == answer_cutoffs
    # each data year read as of its own date (Y-12-31): per year, what answered and how stale
    code, _, err = run_cli(capsys, "evaluate", "--model", run, "--policy", "point-in-time",
                           "--data", data, "--device", "cpu", "--answer-cutoffs", answer_cutoffs,
                           "--json", out, "--max-docs", "4")
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["staleness_days"] == {"2013": 0, "2014": 0}
    assert report["artefacts_used"]["2013"] == [{"name": "2013-2014@2013-12-31",
                                                 "data_cutoff": "2013-12-31"}]


def test_answer_cutoffs_needs_a_choice_of_artefacts(capsys, monthly, tmp_path):
    data, run, _ = monthly
    code, _, err = run_cli(capsys, "evaluate", "--model", run, "--policy", "inclusive",
                           "--data", data, "--device", "cpu", "--answer-cutoffs", "year")
    assert code == 2 and "--answer-cutoffs year" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "evaluate", "--model", run, "--data", data, "--device", "cpu",
                           "--answer-cutoffs", "decade")
    assert code == 2 and "answer-cutoffs" in err


def test_a_snapshot_json_of_yearly_stages_still_reads(tmp_path):
    """snapshot.json written before cutoffs by period named its stage by year."""
    from timoe_core.model.run_info import SnapshotInfo

    old = {"data_cutoff": "2015-12-31", "stage_year": 2015, "stage_steps": 3, "decay_steps": 1,
           "sha256": "0" * 64}
    info = SnapshotInfo.model_validate(old)
    assert info.stage_end == "2015-12-31" and info.data_cutoff == "2015-12-31"
    with pytest.raises(ValueError):
        SnapshotInfo.model_validate(old | {"stage_end": "2015-13-01"})
