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


def _latest(cutoffs: list[str], when: str, every: str | None = None) -> str:
    ok = [c for c in cutoffs if c <= when and (every is None or point_in_time.on_answer_grid(
        date.fromisoformat(c), every))]
    return max(ok)


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
            expected = [c for c in cutoffs if c <= when and point_in_time.on_answer_grid(
                date.fromisoformat(c), every)]
            assert [r.cutoff.isoformat() for r in grid] == ([max(expected)] if expected else [])
    assert point_in_time.staleness_days(date(2014, 8, 15), [date(2013, 12, 31),
                                                          date(2014, 7, 31)]) == 15
    assert point_in_time.on_answer_grid(date(2014, 6, 30), "quarter")
    assert not point_in_time.on_answer_grid(date(2014, 7, 31), "quarter")
    assert point_in_time.on_answer_grid(date(2014, 7, 31), "month")
    assert point_in_time.on_answer_grid(date(2014, 7, 15), "any")


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
    latest = _latest(cutoffs, when, None if answer_cutoffs == "any" else answer_cutoffs)
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
