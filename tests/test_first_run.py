"""What a new user hit on a first run: help at 80 columns, --version, the README's
install and generate lines, the first usable date and summaries train-router prints,
unfinished runs, query dates past the data, and the demo's disk check."""

from __future__ import annotations

import json
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from helpers import invoke_cli, make_data_dir, one_thread, run_cli  # noqa: F401 (fixture)

from timoe_core import __version__
from timoe_core.config import TrainExpertConfig
from timoe_core.train import train_expert

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["prepare-data", "train-expert", "train-router", "coadapt", "evaluate", "compare",
            "generate", "demo", "export", "import"]


# ------------------------------------------------------------------------ help


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_shows_every_option_whole(command, monkeypatch):
    from typer.main import get_command

    from timoe_cli.main import app

    monkeypatch.setenv("COLUMNS", "80")
    result = invoke_cli(command, "--help")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    params = get_command(app).commands[command].params  # type: ignore[attr-defined]
    names = [o for p in params if not p.hidden for o in (*p.opts, *p.secondary_opts)
             if o.startswith("--")]
    assert names
    for name in names:  # whole, ending at a space, a comma or the line's end
        assert re.search(re.escape(name) + r"(?=[\s,]|$)", text, re.MULTILINE), (command, name)


def test_help_prints_brackets_as_written_and_names_dense_series(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")

    def squeezed(text: str) -> str:  # wrapping may break a line at a space or a hyphen
        return "".join(text.split())

    text = squeezed(invoke_cli("evaluate", "--help").output)
    assert squeezed("needs timoe[eval])") in text
    assert squeezed("dense-series (its snapshots, leak-free)") in text
    assert squeezed("runs/dense:dense-series for its snapshots") in squeezed(
        invoke_cli("compare", "--help").output)


def test_version():
    result = invoke_cli("--version")
    assert result.exit_code == 0 and result.output == f"timoe {__version__}\n"


# ---------------------------------------------------------------------- README


def test_readme_installs_the_cpu_build_of_torch_from_pytorchs_index():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    pin = re.search(r'"torch==([\d.]+)"', ci).group(1)
    assert (f"pip install torch=={pin} --index-url https://download.pytorch.org/whl/cpu"
            in readme)


def test_readme_generate_example_is_greedy():
    readme = (ROOT / "README.md").read_text()
    lines = [ln for ln in readme.splitlines() if ln.startswith("timoe generate ")]
    assert lines and all("--greedy" in ln for ln in lines)


# ---------------------------------------------------- runs with snapshots, unfinished

Runs = namedtuple("Runs", "data experts")


def _expert(data: Path, out: Path, year: int, **kw) -> None:
    train_expert(TrainExpertConfig(
        year=year, data=data, out=out, n_layer=1, n_head=2, n_embd=32, seq_len=32,
        steps_per_stage=2, batch_size=4, lr=3e-3, device="cpu", log_every=1, **kw))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """Two experts (2013-2014, 2015-2016), each with a snapshot after its first year."""
    root = tmp_path_factory.mktemp("first-run")
    data = make_data_dir(root, years=range(2013, 2017), tokens_per_year=1024, vocab_size=128)
    for year in (2013, 2015):
        _expert(data, root / "experts" / f"{year}-{year + 1}", year)
    return Runs(data, root / "experts")


def test_train_router_prints_the_first_date_the_snapshots_answer(capsys, runs, tmp_path):
    code, out, err = run_cli(capsys, "train-router", "--strategy", "avg", "--experts",
                             runs.experts, "--out", tmp_path / "avg")
    assert code == 0, err
    assert "first usable query date: 2013-12-31" in out  # the 2013-2014 expert's snapshot


def test_a_staged_router_summary_counts_its_stages_and_steps(capsys, runs, tmp_path):
    code, out, err = run_cli(capsys, "train-router", "--experts", runs.experts, "--data",
                             runs.data, "--out", tmp_path / "l", "--steps-per-stage", "1",
                             "--batch-size", "4", "--device", "cpu")
    assert code == 0, err
    text = " ".join(out.split())
    assert "no new steps" not in text
    # cutoffs 2013..2016: four stages of one step
    assert re.search(r"trained \S+ \(4 stages, 4 steps in all; last stage 2016-12-31: "
                     r"step 1, loss [\d.]+", text), text
    assert "first usable query date: 2013-12-31" in text


def test_an_unfinished_run_is_named_with_how_to_finish_it(capsys, runs, tmp_path):
    experts = tmp_path / "experts"
    shutil.copytree(runs.experts / "2015-2016", experts / "2015-2016")
    # stopped at step 1 of 5 (2 a year and a decay branch to the 2013 snapshot)
    _expert(runs.data, experts / "2013-2014", 2013, stop_at_step=1)
    run = experts / "2013-2014"
    code, _, err = run_cli(capsys, "train-router", "--strategy", "avg", "--experts",
                           experts, "--out", tmp_path / "avg")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    line = " ".join(err.split())
    assert f"{run} is an unfinished run (step 1 of 5)" in line
    assert f"timoe train-expert --config {run / 'config.yaml'}" in line
    assert "missing" not in line and not (tmp_path / "avg").exists()

    # evaluating it works, and says so first
    code, _, err = run_cli(capsys, "evaluate", "--model", run, "--data", runs.data,
                           "--max-docs", "1", "--json", tmp_path / "ev.json")
    assert code == 0, err
    warning = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "is an unfinished run (step 1 of 5)" in warning[0]
    assert "figures are those of step 1" in warning[0]
    report = json.loads((tmp_path / "ev.json").read_text())
    assert report["warnings"] == [warning[0].removeprefix("warning: ")]

    # the command it names finishes it; then nothing is said
    code, _, err = run_cli(capsys, "train-expert", "--config", run / "config.yaml")
    assert code == 0, err
    code, _, err = run_cli(capsys, "evaluate", "--model", run, "--data", runs.data,
                           "--max-docs", "1")
    assert code == 0 and "warning" not in err, err


def test_a_query_date_past_the_data_is_said_and_still_answered(capsys, runs, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", "--model", runs.experts, "--query-date",
                           "2100", "--data", runs.data, "--max-docs", "1")
    assert code == 0, err
    line = " ".join(err.split())
    assert ("query date 2100-12-31 is after the newest data of this model (2016-12-31): it "
            "answers as of 2016-12-31") in line
    code, _, err = run_cli(capsys, "evaluate", "--model", runs.experts, "--query-date",
                           "2016", "--data", runs.data, "--max-docs", "1")
    assert code == 0 and "warning" not in err, err


# ------------------------------------------------------------------------ demo


def test_the_demo_refuses_to_start_on_a_disk_clearly_too_small(capsys, tmp_path, monkeypatch):
    from timoe_core import demo
    from timoe_core.config import DemoConfig
    from timoe_core.demo import disk, run

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: Usage(10**12, 10**12, 10**8))
    monkeypatch.setattr(run, "demo_stages", lambda *a, **k: [])  # nothing would run anyway
    code, _, err = run_cli(capsys, "demo", "--quick", "--out", tmp_path / "d")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    line = " ".join(err.split())
    assert re.search(r"the demo needs about [\d.]+ GB under .*; 0\.1 GB free: [\d.]+ GB short",
                     line), line
    assert not (tmp_path / "d").exists()  # nothing written
    need = demo.disk_needed(demo.demo_settings(DemoConfig(quick=True)), False)
    kept = demo.disk_needed(demo.demo_settings(DemoConfig(quick=True)), True)
    assert 1e9 < need < kept  # keeping every checkpoint needs more


def test_a_finished_run_without_its_checkpoints_says_so_when_rerun(capsys, runs, tmp_path):
    from timoe_core.train.state import checkpoints_dir

    run = tmp_path / "2013-2014"
    shutil.copytree(runs.experts / "2013-2014", run)
    shutil.rmtree(checkpoints_dir(run))  # what the demo does to a finished stage
    weights = (run / "model.safetensors").read_bytes()
    code, _, err = run_cli(capsys, "train-expert", "--config", run / "config.yaml", "--out", run)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    line = " ".join(err.split())
    assert f"{run} is a finished run (step 5 of 5) whose trainer checkpoints were removed" in line
    assert "--no-resume --overwrite" in line
    assert (run / "model.safetensors").read_bytes() == weights
    code, _, err = run_cli(capsys, "evaluate", "--model", run, "--data", runs.data,
                           "--max-docs", "1")
    assert code == 0 and "warning" not in err, err
