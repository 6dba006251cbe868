"""The benchmark suite's plumbing: the JSON schema the runner writes is the one the docs
generator reads. No timing is asserted anywhere (figures come from `python -m benchmarks`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import one_thread  # noqa: F401 (fixture)

from benchmarks import __main__ as runner
from benchmarks import gpu, mixture, report
from benchmarks.common import (
    Measured,
    Skipped,
    figure,
    interleaved_rounds,
    target_met,
)

KEYS = {"value", "unit", "ratio_to", "target", "goal"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _run_record(groups: dict) -> dict:
    return {
        "command": "python -m benchmarks --quick --json bench.json",
        "quick": True,
        "date": "2026-01-02T03:04:05+00:00",
        "seconds": 100.0,
        "loadavg_before": [0.1, 0.2, 0.3],
        "loadavg_after": [0.4, 0.5, 0.6],
        "git": "abc1234",
        "machine": {"cpu": "Test CPU 9000", "cores": 2, "torch": "2.13.0+cpu",
                    "torch_threads": 2, "python": "3.11.7", "platform": "Linux",
                    "cuda_device": None},
        "groups": groups,
    }


@pytest.fixture
def fixture_json() -> dict:
    figs = {
        "mixture_2016_experts_alone_ms": figure(100.0, "ms"),
        "mixture_overhead_vs_experts_alone": figure(0.25, "fraction",
                                                    "mixture_2016_experts_alone_ms", 0.10, "<="),
        "mixture_memory_ratio_to_single_expert": figure(0.63, "x", None, 1.25, "<="),
        "generate_2_eligible_roofline_tokens_per_s": figure(80.0, "tokens/s"),
        "generate_2_eligible_fraction_of_roofline": figure(
            0.62, "fraction", "generate_2_eligible_roofline_tokens_per_s", 0.5, ">="),
        "prepare_data_bytes_per_token": figure(2.0, "bytes/token", None, 2.0, "=="),
    }
    groups = {
        "mixture": {"status": "ran", "reason": None, "seconds": 30.0,
                    "figures": [k for k in figs if k.startswith("mixture")]},
        "generate": {"status": "ran", "reason": None, "seconds": 20.0,
                     "figures": ["generate_2_eligible_roofline_tokens_per_s",
                                 "generate_2_eligible_fraction_of_roofline"]},
        "prepare_data": {"status": "ran", "reason": None, "seconds": 10.0,
                         "figures": ["prepare_data_bytes_per_token"]},
        "gpu": {"status": "skipped", "reason": "no CUDA device", "seconds": 0.1, "figures": []},
    }
    return {**figs, "_run": _run_record(groups)}


def test_report_marks_each_target_met_or_missed(fixture_json):
    md = report.render(fixture_json)
    rows = {line.split("|")[1].strip(): line for line in md.splitlines()
            if line.startswith("| `")}
    assert "| +25.0% |" in rows["`mixture_overhead_vs_experts_alone`"]
    assert "| <= +10.0% | **missed** |" in rows["`mixture_overhead_vs_experts_alone`"]
    assert "`mixture_2016_experts_alone_ms`" in rows["`mixture_overhead_vs_experts_alone`"]
    assert rows["`mixture_memory_ratio_to_single_expert`"].endswith(
        "| 0.63x |  | <= 1.25x | met |")
    assert rows["`generate_2_eligible_fraction_of_roofline`"].endswith(
        "| 62.0% | `generate_2_eligible_roofline_tokens_per_s` | >= 50.0% | met |")
    assert rows["`prepare_data_bytes_per_token`"].endswith("| 2.00 bytes/token |  | == 2 | met |")
    assert rows["`mixture_2016_experts_alone_ms`"].endswith("| 100.00 ms |  |  |  |")
    assert "3 of 4 figures with a target meet it." in md


def test_report_describes_the_machine_and_what_did_not_run(fixture_json):
    md = report.render(fixture_json)
    assert "`python -m benchmarks --quick --json bench.json`" in md
    assert "Test CPU 9000, 2 cores" in md
    assert "before 0.1, 0.2, 0.3; after 0.4, 0.5, 0.6" in md
    assert "torch 2.13.0+cpu" in md
    gpu_section = md.split("## gpu:")[1]
    assert "**Not run here: skipped** (no CUDA device)" in gpu_section
    assert "No GPU was available for this run, so no GPU figure has been measured" in gpu_section
    assert "Not run in this file" in md.split("## train:")[1].split("## mixture:")[0]
    assert "The machine was shared" not in md  # load 0.1 on 2 cores is quiet
    # one section per group, in the suite's order, each with its method text
    heads = [line.split(":")[0][3:] for line in md.splitlines() if line.startswith("## ")
             and ":" in line]
    assert heads == list(runner.GROUPS)
    assert set(report.METHOD) == set(runner.GROUPS)


def test_report_carries_the_paper_comparison_with_its_source_and_method(fixture_json):
    md = report.render(fixture_json)
    section = md.split("## Against the paper's released code")[1].split("\n## ")[0]
    assert "epfml/TiMoE at commit 2de335f" in section
    assert "interleaved in one process on a 2-core CPU" in section and "fp32" in section
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 6 and rows[0].startswith("| mixture evaluation as of 2016")
    assert "| 0.91 tok/s | 171 tok/s (188x) |" in section
    assert "sums to 2.0 per position" in section  # the footnote


def test_report_says_when_the_machine_was_loaded(fixture_json):
    fixture_json["_run"]["loadavg_before"] = [5.5, 4.0, 3.0]
    assert "The machine was shared while this ran (load average 5.5" in report.render(
        fixture_json)


def test_report_refuses_a_file_without_run_record(fixture_json):
    del fixture_json["_run"]
    with pytest.raises(ValueError, match="_run"):
        report.render(fixture_json)


def test_targets_and_goals():
    assert target_met(figure(0.95, "x", None, 0.9, ">=")) is True
    assert target_met(figure(0.85, "x", None, 0.9, ">=")) is False
    assert target_met(figure(0.12, "fraction", None, 0.10, "<=")) is False
    assert target_met(figure(-0.05, "fraction", None, 0.10, "<=")) is True
    assert target_met(figure(2.0, "bytes/token", None, 2.0, "==")) is True
    assert target_met(figure(2.5, "bytes/token", None, 2.0, "==")) is False
    assert target_met(figure(3.0, "ms")) is None
    with pytest.raises(ValueError, match="goal"):
        figure(1.0, "x", None, 0.9)  # a target without a direction is meaningless


def test_interleaved_rounds_rotate_the_order_and_take_self_timed_seconds():
    calls: list[str] = []
    sides = {
        "a": lambda: calls.append("a"),
        "b": lambda: calls.append("b"),
        "c": lambda: (calls.append("c"), Measured(7.0))[1],
    }
    r = interleaved_rounds(sides, repeats=3, warmup=2)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, untimed
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert r.seconds["c"] == [7.0, 7.0, 7.0]
    assert all(len(v) == 3 for v in r.seconds.values())
    assert r.median_ratio("c", "c") == 1.0


def test_unknown_group_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown benchmark group 'nope'"):
        runner.parse_groups(["mixture,nope"])
    assert runner.parse_groups(["gpu", "mixture,train"]) == ["train", "mixture", "gpu"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only skip")
def test_gpu_section_skips_cleanly_without_cuda():
    assert "no CUDA device" in gpu.skip_reason()
    with pytest.raises(Skipped, match="no CUDA device"):
        gpu.run(quick=True)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the gpu group would really run")
def test_runner_json_is_what_the_report_reads(tmp_path, monkeypatch, capsys):
    """One real group at tiny sizes through the runner, then the generator on its file."""
    what = runner.GROUPS["mixture"][0]
    monkeypatch.setitem(runner.GROUPS, "mixture", (what, lambda quick: mixture.run(
        quick, batch=1, seq_lens=[8, 4], repeats=1, wider=None, vocab_size=512, n_embd=32)))
    out = tmp_path / "bench.json"
    assert runner.main(["--quick", "--only", "mixture,gpu", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    run = data.pop("_run")
    assert run["quick"] is True and run["command"].startswith("python -m benchmarks --quick")
    assert len(run["loadavg_before"]) == 3 and run["machine"]["cores"] >= 1
    assert run["groups"]["gpu"]["status"] == "skipped"
    assert run["groups"]["mixture"]["status"] == "ran"
    assert run["groups"]["mixture"]["figures"] == list(data)
    for name, f in data.items():
        assert set(f) == KEYS, name
        assert f["ratio_to"] is None or f["ratio_to"] in data, name
        assert (f["target"] is None) == (f["goal"] is None), name
    for name in ("mixture_overhead_vs_experts_alone", "mixture_memory_ratio_to_single_expert",
                 "mixture_6_eligible_peak_mib", "mixture_seq4_ms", "mixture_speedup_vs_naive_dense"):
        assert name in data
    # memory is deterministic: the streamed mixture never holds more than one expert does
    assert data["mixture_memory_ratio_to_single_expert"]["value"] <= 1.25
    assert data["mixture_naive_dense_memory_ratio"]["value"] > 2

    md_path = tmp_path / "benchmarks.md"
    assert report.main([str(out), "--out", str(md_path)]) == 0
    md = md_path.read_text()
    assert "| `mixture_overhead_vs_experts_alone` |" in md
    assert "**Not run here: skipped**" in md


def test_committed_docs_are_generated_from_the_committed_json():
    root = Path(__file__).resolve().parents[1]
    data = json.loads((root / "docs" / "benchmarks.json").read_text(encoding="utf-8"))
    assert (root / "docs" / "benchmarks.md").read_text(encoding="utf-8") == report.render(data), (
        "docs/benchmarks.md is stale: run `python -m benchmarks.report docs/benchmarks.json`")


def test_decode_bytes_count_every_weight_a_step_reads_and_the_kv_cache():
    from benchmarks.generate import decode_bytes_per_token
    from timoe_core.model.gpt import GPT, preset_config

    model = GPT(preset_config("tiny", vocab_size=512, block_size=64))
    c = model.config
    blocks = sum(p.numel() for p in model.blocks.parameters())
    final_norm = sum(p.numel() for p in model.ln_f.parameters())
    one_row_each = 2 * c.n_embd  # the token's and the position's embedding rows
    weights = 4 * (blocks + final_norm + c.vocab_size * c.n_embd + one_row_each)
    kv = 4 * 2 * c.n_layer * 40 * c.n_embd  # keys and values of 40 positions, every layer
    assert decode_bytes_per_token(model, 40) == weights + kv


def test_generate_group_figures_hang_together(tmp_path):
    from benchmarks import generate

    f = generate.run(True, preset="tiny", eligible=[1, 2], prompt_tokens=8, new_tokens=4,
                     repeats=1)
    for name, fig in f.items():
        assert set(fig) == KEYS and name.startswith("generate_"), name
        assert fig["ratio_to"] is None or fig["ratio_to"] in f, name
    for n in (1, 2):
        k = f"generate_{n}_eligible"
        assert f[f"{k}_fraction_of_roofline"]["target"] == 0.5
        ratio = f[f"{k}_decode_tokens_per_s"]["value"] / f[f"{k}_roofline_tokens_per_s"]["value"]
        assert f[f"{k}_fraction_of_roofline"]["value"] == pytest.approx(ratio, rel=0.02)
    best = max(f[f"generate_bandwidth_{m}_bytes_per_s"]["value"]
               for m in ("copy", "read", "matvec"))
    per_token = f["generate_decode_bytes_per_expert_token"]["value"]
    assert f["generate_2_eligible_roofline_tokens_per_s"]["value"] == pytest.approx(
        best / (2 * per_token), rel=0.01)


@pytest.mark.slow
def test_staged_group_figures_hang_together():
    """The staged group at tiny sizes, one round: its figures are present, in the schema,
    and consistent with each other and with the stages the runs really had."""
    from benchmarks import staged

    f = staged.run(True, seq_len=16, batch=2, steps_per_stage=4, repeats=1, vocab_size=128,
                   n_embd=32, n_layer=1, n_head=2)
    for name, fig in f.items():
        assert set(fig) == KEYS and name.split("_")[0] in ("staged", "unstaged"), name
        assert fig["ratio_to"] is None or fig["ratio_to"] in f, name
    v = {name: fig["value"] for name, fig in f.items()}
    # One round: each ratio is that round's staged / unstaged seconds.
    assert v["staged_expert_ratio_to_unstaged"] == pytest.approx(
        v["staged_expert_seconds"] / v["unstaged_expert_seconds"], rel=0.02)
    assert v["staged_router_ratio_to_unstaged"] == pytest.approx(
        v["staged_router_seconds"] / v["unstaged_router_seconds"], rel=0.02)
    for name in ("staged_expert_ratio_to_unstaged", "staged_router_ratio_to_unstaged"):
        assert (f[name]["target"], f[name]["goal"]) == (1.10, "<=")
    # Expert: 2 stages of 4 steps and a final decay of 1 (10% of 4, at least 1) in the
    # main run; one branch of 1 step (stage 2013's decay), counted on the real runs.
    assert v["staged_expert_stages"] == 2
    assert (v["staged_expert_main_steps"], v["staged_expert_branch_steps"]) == (9, 1)
    assert v["staged_expert_branch_step_fraction"] == pytest.approx(1 / 9, abs=1e-4)
    assert v["staged_expert_branch_fraction_expected"] == pytest.approx(0.05)
    assert v["staged_expert_overhead_beyond_branches"] == pytest.approx(
        v["staged_expert_ratio_to_unstaged"] - 1 - v["staged_expert_branch_step_fraction"],
        abs=1e-3)
    # Router: one stage per cutoff 2013..2016, 4 steps of 2 windows each on 4 windows a
    # year (two epochs), so each stage builds a cache and every window x usable expert
    # (1 in 2013-2014, 2 in 2015-2016) goes through the frozen expert exactly once.
    assert (v["staged_router_stages"], v["staged_router_steps"]) == (4, 16)
    assert v["staged_router_windows_read_per_window"] == 2.0
    assert v["staged_router_caches_built"] == 4
    assert v["staged_router_expert_windows"] == 4 * (1 + 1 + 2 + 2)
    assert v["staged_router_expert_forwards"] == v["staged_router_expert_windows"]
    assert target_met(f["staged_router_expert_forwards_per_window"]) is True
    assert v["unstaged_router_expert_forwards_per_window"] == 1.0


def test_staged_router_forwards_figure_tells_a_missing_cache():
    from benchmarks.common import Rounds
    from benchmarks.staged import router_figures

    rounds = Rounds({"staged": [2.0, 2.2], "unstaged": [1.0, 2.0]})
    once = {"forwards": 24, "expert_windows": 24, "windows_read": 32, "windows": 16,
            "caches": 0}
    f = router_figures(rounds, {"staged": {**once, "forwards": 48}, "unstaged": once}, 4, 16)
    assert f["staged_router_expert_forwards_per_window"]["value"] == 2.0
    assert target_met(f["staged_router_expert_forwards_per_window"]) is False
    assert f["staged_router_ratio_to_unstaged"]["value"] == pytest.approx(1.55)  # (2 + 1.1) / 2
    assert f["staged_router_seconds_per_extra_stage"]["value"] == pytest.approx(0.2)


def test_report_explains_a_missed_staged_target_only_when_missed(fixture_json):
    fixture_json["unstaged_expert_seconds"] = figure(1.4, "s")
    fixture_json["staged_expert_ratio_to_unstaged"] = figure(1.18, "x", "unstaged_expert_seconds",
                                                             1.10, "<=")
    fixture_json["_run"]["groups"]["staged"] = {
        "status": "ran", "reason": None, "seconds": 24.0,
        "figures": ["unstaged_expert_seconds", "staged_expert_ratio_to_unstaged"]}
    section = report.render(fixture_json).split("## staged:")[1].split("\n## ")[0]
    assert "| `staged_expert_ratio_to_unstaged` | 1.18x |" in section and "**missed**" in section
    assert "a fixed cost per snapshot and per router stage" in section
    fixture_json["staged_expert_ratio_to_unstaged"]["value"] = 1.05
    section = report.render(fixture_json).split("## staged:")[1].split("\n## ")[0]
    assert "| met |" in section and "a fixed cost per snapshot" not in section


# Every group of `python -m benchmarks`, at its smallest size: a group that cannot run
# (like the evaluate group that once queried a mixture before its first expert's cutoff)
# fails here, not in the next benchmark run. The sizes say nothing about speed.
SMALLEST = {
    "prepare_data": {"mb": 0.05, "repeats": 1},
    "train": {"batch": 2, "seq_len": 16, "steps": 1, "repeats": 1},
    "mixture": {"batch": 1, "seq_lens": [16], "repeats": 1, "scaling": False, "wider": None},
    "router": {"batch": 2, "seq": 16, "repeats": 1},
    "staged": {"seq_len": 16, "batch": 2, "steps_per_stage": 2, "repeats": 1,
               "vocab_size": 256, "n_embd": 16, "n_layer": 1, "n_head": 2},
    "cutoffs": {"years": 4, "tokens_per_year": 8 * 33 * 12, "repeats": 1},
    "snapshots": {"seq_len": 16, "batch": 2, "steps_per_stage": 2, "repeats": 1,
                  "vocab_size": 256, "n_embd": 16, "n_layer": 1, "n_head": 2,
                  "docs_per_year": 12, "quality_steps": 2, "fractions": [0.5],
                  "end_year": 2015},
    "generate": {"preset": "tiny", "eligible": [1, 2], "prompt_tokens": 8, "new_tokens": 2,
                 "repeats": 1, "full": False},
    "evaluate": {"experts": 3, "windows": 1, "batch_size": 8, "repeats": 1},
    "gpu": {},
}


def _group_runner(name: str):
    from benchmarks import (
        cutoffs,
        evaluate,
        generate,
        prepare_data,
        snapshots,
        staged,
        train_throughput,
    )

    return {"prepare_data": prepare_data.run, "train": train_throughput.run,
            "mixture": mixture.run, "router": mixture.run_router_training,
            "staged": staged.run, "cutoffs": cutoffs.run, "snapshots": snapshots.run,
            "generate": generate.run, "evaluate": evaluate.run,
            "gpu": gpu.run}[name]


def test_every_group_has_a_smallest_size():
    assert set(SMALLEST) == set(runner.GROUPS)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALLEST))
def test_every_benchmark_group_runs_at_its_smallest_size(name):
    if name == "gpu" and not torch.cuda.is_available():
        with pytest.raises(Skipped):
            gpu.run(quick=True)
        return
    figures = _group_runner(name)(True, **SMALLEST[name])
    assert figures, f"the {name} group measured nothing"
    for key, fig in figures.items():
        assert set(fig) <= KEYS, key
        assert isinstance(fig["value"], (int, float)) and fig["value"] == fig["value"], key


def test_staleness_figures_are_the_days_since_the_last_period_end():
    """Yearly cutoffs: an answer as of d is d's day of the year stale (0 on Dec 31);
    monthly: d's day of the month (0 on a month's last day), over 2014-2024."""
    from datetime import date, timedelta

    from benchmarks.cutoffs import staleness

    days = [date(2014, 1, 1) + timedelta(days=i) for i in range(4018)]
    assert days[-1] == date(2024, 12, 31)

    def expected(d: date, every: str) -> int:
        if every == "year":
            return (d - date(d.year - 1, 12, 31)).days % (366 if d.year % 4 == 0 else 365)
        if every == "month":
            first = d.replace(day=1)
            last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
            return 0 if d == last else d.day
        start = date(d.year, 3 * ((d.month - 1) // 3) + 1, 1)
        end = (date(d.year, start.month + 2, 28) + timedelta(days=4)).replace(day=1) - timedelta(
            days=1)
        return 0 if d == end else (d - start).days + 1

    for every in ("year", "quarter", "month"):
        values = [expected(d, every) for d in days]
        mean, worst, n = staleness(every)
        assert n == 4018 and worst == max(values)
        assert mean == pytest.approx(sum(values) / len(values))
    assert staleness("year")[0] > 150 and staleness("month")[0] < 16
