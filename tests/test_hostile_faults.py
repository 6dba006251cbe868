"""Hostile input and real faults, round three: lock files and outputs that are not what
they seem, resumes over a changed or broken past, metadata of the wrong shape, merges
that must not happen, numbers the parser cannot hold, flags that would be ignored,
foreign spellings and unsafe advice. One test (or a few) per class of
docs/bad-inputs.md; scripts/hostile_sweep.py runs many more cases through the CLI.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from helpers import make_data_dir, make_expert_runs, run_cli

from timoe_core.errors import TimoeError
from timoe_core.lock import lock_path, output_lock


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under `root`: a file's bytes, a link's target, a folder's name."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = "dir"
    return out


# ------------------------------------------------------------ lock files


@pytest.mark.parametrize("kind", ["symlink-to-user-file", "dangling-symlink", "folder",
                                  "hard-link", "user-text", "fifo"])
def test_a_lock_file_that_is_not_a_plain_file_we_made_is_refused_naming_it(tmp_path, kind):
    out = tmp_path / "run"
    lock = lock_path(out)
    mine = tmp_path / "precious.txt"
    mine.write_text("my thesis\n")
    if kind == "symlink-to-user-file":
        lock.symlink_to(mine)
    elif kind == "dangling-symlink":
        lock.symlink_to(tmp_path / "nowhere")
    elif kind == "folder":
        lock.mkdir()
        (lock / "x").write_text("x")
    elif kind == "hard-link":
        os.link(mine, lock)
    elif kind == "user-text":
        lock.write_text("this is not a lock line at all, it is a user's file\n")
    else:
        os.mkfifo(lock)
    before = _tree(tmp_path)
    with pytest.raises(TimoeError, match=rf"its lock file {lock} is .*not a lock file timoe "
                                         r"made"), output_lock(out):
        pass
    assert _tree(tmp_path) == before  # the user's file, the link, all untouched
    assert mine.read_text() == "my thesis\n"


def test_a_lock_file_through_the_cli_is_one_line_and_the_users_file_is_kept(tmp_path, capsys):
    data = make_data_dir(tmp_path / "d", years=(2013,), vocab_size=128, seq_len=16)
    mine = tmp_path / "precious.txt"
    mine.write_text("my thesis\n")
    out = tmp_path / "run"
    lock_path(out).symlink_to(mine)
    code, _, err = run_cli(capsys, "train-expert", "--year", "2013", "--data", data, "--out",
                           out, "--max-steps", "1", "--snapshots", "none", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "symbolic link" in err and mine.read_text() == "my thesis\n" and not out.exists()


def test_a_stale_lock_we_made_is_still_taken_over(tmp_path):
    out = tmp_path / "run"
    lock_path(out).write_text(f"{socket.gethostname()} 999999999 2020-01-01T00:00:00Z\n")
    with output_lock(out) as lock:
        assert lock.read_text().split()[1] == str(os.getpid())
    assert not lock_path(out).exists()


# ------------------------------------------------------------ odd output paths


def _odd_out(tmp_path: Path, odd: str) -> Path:
    """An --out path of the given oddity, built in tmp_path/sandbox."""
    box = tmp_path / "sandbox"
    box.mkdir()
    out = box / "out"
    if odd == "dangling-symlink":
        out.symlink_to(box / "nowhere")
    elif odd == "symlink-loop":
        out.symlink_to(box / "loop")
        (box / "loop").symlink_to(out)
    elif odd == "symlink-to-user-file":
        (box / "mine.txt").write_text("mine")
        out.symlink_to(box / "mine.txt")
    elif odd == "fifo":
        os.mkfifo(out)
    elif odd == "under-dangling-symlink":
        (box / "parent").symlink_to(box / "gone")
        out = box / "parent" / "out"
    elif odd == "under-a-file":
        (box / "parent").write_text("mine")
        out = box / "parent" / "out"
    return out


ODD_OUTS = ["dangling-symlink", "symlink-loop", "symlink-to-user-file", "fifo",
            "under-dangling-symlink", "under-a-file"]


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    data = make_data_dir(root / "data", years=(2013, 2014), vocab_size=128, seq_len=16)
    experts = make_expert_runs(root / "experts", ["2013-2014", "2015-2016"])
    return {"data": data, "experts": root / "experts", "e13": experts["2013-2014"]}


def _command(name: str, inputs: dict[str, Path], out: Path) -> list:
    return {
        "prepare-data": ["prepare-data", "--source", "builtin", "--builtin-docs-per-year", "3",
                         "--seq-len", "16", "--workers", "1", "--out", out],
        "prepare-data-merge": ["prepare-data", "--merge", inputs["data"], "--out", out],
        "train-expert": ["train-expert", "--year", "2013", "--data", inputs["data"], "--out", out,
                         "--max-steps", "1", "--snapshots", "none", "--device", "cpu"],
        "train-router-avg": ["train-router", "--strategy", "avg", "--experts",
                             inputs["experts"], "--out", out],
        "export": ["export", "--model", inputs["e13"], "--out", out],
        "evaluate-json": ["evaluate", "--model", inputs["e13"], "--tsqa", "builtin",
                          "--max-items", "1", "--device", "cpu", "--json", out],
        "evaluate-plot": ["evaluate", "--model", inputs["e13"], "--tsqa", "builtin",
                          "--max-items", "1", "--device", "cpu", "--plot",
                          out.with_name(out.name + ".png") if "under" in str(out) else out],
    }[name]


@pytest.mark.parametrize("odd", ODD_OUTS)
@pytest.mark.parametrize("command", ["prepare-data", "prepare-data-merge", "train-expert",
                                     "train-router-avg", "export", "evaluate-json"])
def test_an_odd_output_path_is_refused_in_one_line_before_any_work(
    tmp_path, capsys, small_inputs, command, odd
):
    out = _odd_out(tmp_path, odd)
    before = _tree(tmp_path)
    code, _, err = run_cli(capsys, *_command(command, small_inputs, out))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and str(out) in err
    assert _tree(tmp_path) == before  # nothing written, no link replaced or written through


@pytest.mark.parametrize("command", ["prepare-data", "train-router-avg", "export"])
def test_a_link_to_an_empty_folder_as_out_writes_into_that_folder(tmp_path, capsys,
                                                                  small_inputs, command):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    code, _, err = run_cli(capsys, *_command(command, small_inputs, link))
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link is kept
    assert any(real.iterdir())  # the output is in the folder it points at


# ------------------------------------------------------------ merges


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """Shards of the built-in corpus, prepared with the same options but for one."""
    from timoe_core.config import PrepareDataConfig
    from timoe_core.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("shards")
    base = {"source": "builtin", "builtin_docs_per_year": 4, "seq_len": 16, "workers": 1,
                "end_year": 2016, "num_shards": 2}
    made = {}
    for name, extra in (("s0", {"shard_index": 0}), ("s1", {"shard_index": 1}),
                        ("s1-until", {"shard_index": 1, "until": "2015"}),
                        ("s1-seed", {"shard_index": 1, "seed": 7}),
                        ("s1-docs", {"shard_index": 1, "builtin_docs_per_year": 5})):
        prepare_data(PrepareDataConfig(**(base | extra), out=root / name))
        made[name] = root / name
    return made


@pytest.mark.parametrize("other, flag", [("s1-until", "--until"), ("s1-seed", "--seed"),
                                         ("s1-docs", "--builtin-docs-per-year")])
def test_a_merge_of_shards_read_differently_is_refused_naming_the_field(
    tmp_path, capsys, shards, other, flag
):
    code, _, err = run_cli(capsys, "prepare-data", "--merge", shards["s0"], shards[other],
                           "--out", tmp_path / "m")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"their {flag} differ" in err and not (tmp_path / "m").exists()


@pytest.mark.parametrize("where", ["first-input", "second-input", "inside-an-input",
                                   "link-to-an-input"])
def test_a_merge_never_writes_into_one_of_its_inputs_even_with_overwrite(
    tmp_path, capsys, shards, where
):
    import shutil

    s0 = Path(shutil.copytree(shards["s0"], tmp_path / "s0"))
    s1 = Path(shutil.copytree(shards["s1"], tmp_path / "s1"))
    out = {"first-input": s0, "second-input": s1, "inside-an-input": s0 / "train"}.get(where)
    if out is None:
        out = tmp_path / "link"
        out.symlink_to(s1)
    before = _tree(tmp_path)
    code, _, err = run_cli(capsys, "prepare-data", "--merge", s0, s1, "--out", out,
                           "--overwrite")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert _tree(tmp_path) == before


# ------------------------------------------------------------ foreign spellings


def test_device_cuda_n_is_accepted_everywhere_a_device_is_resolved(monkeypatch):
    import torch

    from timoe_core.config import EvaluateConfig, GenerateConfig, TrainExpertConfig
    from timoe_core.device import resolve_device

    for model, required in ((EvaluateConfig, {}), (GenerateConfig, {}),
                            (TrainExpertConfig, {"year": 2013})):
        assert model(device="cuda:0", **required).device == "cuda:0"
        with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
            model(device="cuda0", **required)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)
    with pytest.raises(TimoeError, match="this machine has 2 GPU"):
        resolve_device("cuda:2")
    with pytest.raises(TimoeError, match="must be auto, cpu, cuda or cuda:N"):
        resolve_device("cpu:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TimoeError, match="--device cuda:0 was asked for but CUDA is not"):
        resolve_device("cuda:0")


def test_lm_eval_device_cuda_0_reaches_the_model_as_that_gpu(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from timoe_core.evaluate import harness

    seen = {}

    def load(model, strategy, policy=None, device="auto"):
        seen["device"] = device
        raise TimoeError("stop here")

    monkeypatch.setattr(harness, "load_evaluated_model", load)
    with pytest.raises(TimoeError, match="stop here"):
        harness.TimoeLM.create_from_arg_string("model=x", {"device": "cuda:0", "batch_size": 1,
                                                           "max_batch_size": None})
    assert seen["device"] == "cuda:0"


# ------------------------------------------------------------ flags ignored silently


@pytest.mark.parametrize("model_args", ["model=RUN,bogus_key=1", "model=RUN,querydate=2016",
                                        "model=RUN,max_length=64"])
def test_timoe_lm_eval_refuses_an_unknown_model_args_key_up_front(tmp_path, model_args):
    pytest.importorskip("lm_eval")
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "timoe_cli.lm_eval", "--model", "timoe", "--model_args",
         model_args.replace("RUN", str(tmp_path / "nothing")), "--tasks", "arc_easy"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1",
             "HF_DATASETS_OFFLINE": "1"},
    )
    key = model_args.split(",")[1].split("=")[0]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        (f"error: --model_args {key}=... is not an option of the timoe model: use model, "
        "query_date, date_field, strategy, policy, device, batch_size, greedy")]


# ------------------------------------------------------------ unsafe advice


@pytest.mark.parametrize("content", ["namespace", "code", "not-a-pickle"])
def test_importing_a_pickle_the_safe_loader_refuses_says_ours_in_one_line(tmp_path, capsys,
                                                                         content):
    import argparse

    import torch

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({
        "n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 50304, "sequence_length": 32,
        "bias": False, "dropout": 0.0, "mlp_dim_exp_factor": 1.0}))
    pt = src / "pytorch_model.bin"
    if content == "namespace":
        torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(a=1)}, pt)
    elif content == "code":
        torch.save({"model": {"w": torch.zeros(2)}, "f": os.system}, pt)
    else:
        pt.write_bytes(b"\x80\x04garbage")
    code, _, err = run_cli(capsys, "import", "--format", "gptbase", "--source", src, "--slice",
                           "2015-2016", "--out", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{pt} is a pickle timoe will not unpickle" in err and "safetensors" in err
    why = {"namespace": "GLOBAL argparse.Namespace", "code": "GLOBAL posix.system"}
    assert why.get(content, "") in err  # the loader's own reason, whole
    assert "Re-running" not in err and "will likely succeed" not in err  # torch's advice
    assert not (tmp_path / "out").exists()


def test_a_refused_trainer_state_never_repeats_torchs_advice():
    import pickle

    from timoe_core.io import safe_loader_refusal

    exc = pickle.UnpicklingError(
        "Weights only load failed. This file can still be loaded, to do so you have two "
        "options. \n\t(1) In PyTorch 2.6, we changed the default value of the `weights_only` "
        "argument in `torch.load` from `False` to `True`. Re-running `torch.load` with "
        "`weights_only` set to `False` will likely succeed, but it can result in arbitrary "
        "code execution.\n\t(2) Alternatively ...\n\tWeightsUnpickler error: Unsupported "
        "global: GLOBAL posix.system was not an allowed global by default. Please use "
        "`torch.serialization.add_safe_globals([system])`.\n\nCheck the documentation")
    assert safe_loader_refusal(exc) == ("Unsupported global: GLOBAL posix.system was not an "
                                        "allowed global by default")


# ------------------------------------------------------------ numbers the parser cannot hold


@pytest.mark.parametrize("name, text", [
    ("c.yaml", "seed: " + "9" * 5000 + "\n"),
    ("c.json", '{"lr": ' + "1" * 5000 + "}"),
    ("c.toml", "max_steps = " + "7" * 5000 + "\n"),
], ids=["yaml", "json", "toml"])
def test_a_config_with_a_5000_digit_integer_is_one_clean_line(tmp_path, capsys, name, text):
    cfg = tmp_path / name
    cfg.write_text(text)
    code, _, err = run_cli(capsys, "train-expert", "--config", cfg, "--year", "2013",
                           "--data", tmp_path / "d", "--out", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"config file {cfg} is not valid" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit", [
    {"n_layer": 10**9}, {"n_embd": 10**12, "n_head": 1}, {"sequence_length": 10**15},
    {"dropout": "1e999999"}, {"n_layer": "RAW" + "9" * 5000},
], ids=["n-layer", "n-embd", "sequence-length", "dropout-overflow", "n-layer-5000-digits"])
def test_an_imported_config_json_with_huge_values_is_one_clean_line(tmp_path, capsys, edit):
    src = tmp_path / "src"
    src.mkdir()
    config = {"n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 50304,
              "sequence_length": 32, "bias": False, "dropout": 0.0, "mlp_dim_exp_factor": 1.0}
    text = json.dumps(config | edit)
    text = text.replace('"RAW', "").replace('9"', "9")  # a bare 5000-digit number
    (src / "config.json").write_text(text)
    code, _, err = run_cli(capsys, "import", "--format", "gptbase", "--source", src, "--slice",
                           "2015-2016", "--out", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_run_json_with_a_5000_digit_integer_is_corrupt_not_a_traceback(tmp_path, capsys):
    run = make_expert_runs(tmp_path / "runs", ["2013-2014"])["2013-2014"]
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text.replace('"n_layer": 1', '"n_layer": ' + "1" * 5000))
    code, _, err = run_cli(capsys, "generate", "--model", run, "--prompt", "a", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "run.json is corrupt" in err


# ------------------------------------------------------------ resume over a changed past

STAGED = ["--seq-len", "16", "--batch-size", "2", "--log-every", "5", "--device", "cpu",
          "--steps-per-stage", "2", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
          "--eval-batches", "1"]


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory) -> dict[str, Path]:
    """A finished staged run of 2013-2014 (a snapshot as of 2013-12-31), made once."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("staged")
    data = make_data_dir(root / "data", years=(2013, 2014), vocab_size=128, seq_len=16)
    run = root / "run"
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "timoe_cli", "train-expert", "--year", "2013",
                           "--data", data, "--out", run, *STAGED], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {"data": data, "run": run}


def _copy_run(staged_run: dict[str, Path], tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(staged_run["run"], tmp_path / "run"))


def _rerun(capsys, staged_run, run: Path, *flags: str) -> tuple[int, str, str]:
    argv = ["train-expert", "--year", "2013", "--data", staged_run["data"], "--out", run,
            *STAGED, *flags]
    return run_cli(capsys, *argv)


@pytest.mark.parametrize("flag, value", [("--steps-per-stage", "3"), ("--lr", "0.002"),
                                         ("--batch-size", "1"), ("--decay-fraction", "0.5"),
                                         ("--seed", "1")])
def test_a_rerun_with_a_flag_that_changes_a_finished_stage_is_a_conflict(
    tmp_path, capsys, staged_run, flag, value
):
    run = _copy_run(staged_run, tmp_path)
    before = _tree(run)
    code, _, err = _rerun(capsys, staged_run, run, flag, value)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot resume" in err and f"{flag} (run has" in err
    assert _tree(run) == before
    # --overwrite starts over, as the message says
    code, _, err = _rerun(capsys, staged_run, run, flag, value, "--no-resume", "--overwrite")
    assert code == 0, err


def _damage(run: Path, how: str) -> None:
    snap = run / "snapshots" / "2013-12-31"
    if how == "weights-changed":
        w = snap / "model.safetensors"
        data = bytearray(w.read_bytes())
        data[-1] ^= 0xFF
        w.unlink()
        w.write_bytes(bytes(data))
    elif how == "weights-deleted":
        (snap / "model.safetensors").unlink()
    elif how == "snapshot-deleted":
        import shutil

        shutil.rmtree(snap)
    elif how == "snapshot-json-list":
        (snap / "snapshot.json").write_text("[1, 2, 3]")
    elif how == "snapshot-json-sha-number":
        meta = json.loads((snap / "snapshot.json").read_text())
        meta["sha256"] = 12345
        (snap / "snapshot.json").write_text(json.dumps(meta))
    elif how == "snapshot-json-other-stage":
        meta = json.loads((snap / "snapshot.json").read_text())
        meta["stage_steps"] = 99
        (snap / "snapshot.json").write_text(json.dumps(meta))


DAMAGE = ["weights-changed", "weights-deleted", "snapshot-deleted", "snapshot-json-list",
          "snapshot-json-sha-number", "snapshot-json-other-stage"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_rerun_refuses_a_snapshot_deleted_or_damaged_between_runs(tmp_path, capsys,
                                                                    staged_run, how):
    run = _copy_run(staged_run, tmp_path)
    _damage(run, how)
    before = _tree(run)
    code, _, err = _rerun(capsys, staged_run, run)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "snapshot" in err and "Traceback" not in err
    assert _tree(run) == before  # refused: nothing rewritten


@pytest.mark.parametrize("how", [d for d in DAMAGE if d != "snapshot-json-other-stage"])
def test_evaluating_a_damaged_snapshot_is_refused(tmp_path, capsys, staged_run, how):
    run = _copy_run(staged_run, tmp_path / "experts")  # a folder of experts: snapshots used
    _damage(run, how)
    code, _, err = run_cli(capsys, "evaluate", "--model", run.parent, "--data",
                           staged_run["data"],
                           "--device", "cpu", "--query-date", "2014-01-01",
                           "--policy", "point-in-time")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "2013-12-31" in err and "Traceback" not in err


def test_a_successful_rerun_removes_the_temp_files_a_killed_write_left(tmp_path, capsys,
                                                                       staged_run):
    run = _copy_run(staged_run, tmp_path)
    debris = [run / ".model.safetensors.a1b2c3d4.tmp", run / ".run.json.zz_9yy8x.tmp",
              run / "snapshots" / "2013-12-31" / ".model.safetensors.q1w2e3r4.tmp",
              run / "snapshots" / "2013-12-31" / ".snapshot.json.abcdefgh.tmp"]
    for p in debris:
        p.write_bytes(b"half")
    mine = run / ".my-notes.txt.tmp"  # not ours: kept
    mine.write_text("mine")
    code, _, err = _rerun(capsys, staged_run, run)
    assert code == 0, err
    assert [p for p in debris if p.exists()] == [] and mine.read_text() == "mine"


# ------------------------------------------------------------ metadata of the wrong shape


@pytest.mark.parametrize("entry", [
    [{"data_cutoff": "2013-12-31", "path": "../../elsewhere"}],
    [{"data_cutoff": "2013-12-31", "path": "/etc"}],
    [{"data_cutoff": "not a date", "path": "snapshots/not a date"}],
    [{"data_cutoff": "2013-12-31"}],
], ids=["dotdot", "absolute", "bad-date", "no-path"])
def test_run_json_snapshot_entries_are_validated(tmp_path, capsys, staged_run, entry):
    run = _copy_run(staged_run, tmp_path)
    info = json.loads((run / "run.json").read_text())
    info["snapshots"] = entry
    (run / "run.json").write_text(json.dumps(info))
    code, _, err = run_cli(capsys, "evaluate", "--model", run, "--data", staged_run["data"],
                           "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "run.json is corrupt (snapshots" in err


@pytest.mark.parametrize("text", ["[1, 2]", '"x"', "{}", '{"strategy": "avg"'])
def test_a_mixture_run_record_of_the_wrong_shape_is_corrupt(tmp_path, text):
    from timoe_core.io import read_json_object

    path = tmp_path / "mixture_run.json"
    path.write_text(text)
    if text == "{}":
        assert read_json_object(path, "fix") == {}
        return
    with pytest.raises(TimoeError, match=r"mixture_run.json is corrupt \(.*\): fix"):
        read_json_object(path, "fix")


def test_a_run_config_yaml_of_the_wrong_shape_is_refused_on_resume(tmp_path, capsys,
                                                                   staged_run):
    run = _copy_run(staged_run, tmp_path)
    (run / "config.yaml").write_text("- just\n- a list\n")
    code, _, err = _rerun(capsys, staged_run, run)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "config.yaml is corrupt" in err


@pytest.mark.parametrize("model", ["folder", "bundle"])
def test_strategy_dense_series_on_experts_is_refused_not_run_as_avg(tmp_path, capsys,
                                                                    small_inputs, model):
    target = small_inputs["experts"]
    if model == "bundle":
        target = tmp_path / "bundle"
        code, _, err = run_cli(capsys, "train-router", "--strategy", "avg", "--experts",
                               small_inputs["experts"], "--out", target)
        assert code == 0, err
    code, out, err = run_cli(capsys, "evaluate", "--model", target, "--strategy",
                             "dense-series", "--data", small_inputs["data"], "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "dense-series" in err and "avg" not in out


def test_strategy_dense_series_on_a_folder_with_one_dense_run_evaluates_that_run(
    tmp_path, capsys, small_inputs
):
    from helpers import make_run

    from timoe_core.model.run_info import read_run_info

    folder = tmp_path / "models"
    cfg = read_run_info(small_inputs["e13"]).model_config_
    make_run(folder / "dense", "dense", "2013-2024", cfg,
             tokenizer={"name": "gpt2", "vocab_size": 128, "eot_token": 127})
    code, _out, err = run_cli(capsys, "evaluate", "--model", folder, "--strategy", "dense-series",
                             "--data", small_inputs["data"], "--device", "cpu", "--json",
                             tmp_path / "r.json")
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["strategy"] == "dense-series"


@pytest.mark.parametrize("argv, flag", [
    (["generate", "--greedy", "--top-k", "5"], "--top-k"),
    (["generate", "--greedy", "--temperature", "0.5"], "--temperature"),
    (["evaluate", "--tsqa", "builtin", "--max-docs", "3"], "--max-docs"),
    (["evaluate", "--tsqa", "builtin", "--matrix"], "--matrix"),
    (["evaluate", "--data", "DATA", "--max-items", "3"], "--max-items"),
    (["evaluate", "--data", "DATA", "--tsqa-field", "question=q"], "--tsqa-field"),
    (["evaluate", "--tsqa", "builtin", "--lm-eval-limit", "3"], "--lm-eval-limit"),
    (["evaluate", "--tsqa", "builtin", "--lm-eval-date-field", "year"],
     "--lm-eval-date-field"),
    (["train-expert", "--year", "2013", "--snapshots", "none", "--steps-per-stage", "3",
      "--max-steps", "2"], "--steps-per-stage"),
    (["prepare-data", "--source", "SRC", "--builtin-docs-per-year", "5"],
     "--builtin-docs-per-year"),
    (["prepare-data", "--source", "SRC", "--seed", "3"], "--seed"),
    (["prepare-data", "--source", "SRC", "--hf-split", "validation"], "--hf-split"),
    (["prepare-data", "--merge", "DATA", "--seq-len", "64"], "--seq-len"),
    (["prepare-data", "--merge", "DATA", "--until", "2015"], "--until"),
], ids=lambda v: "-".join(map(str, v)) if isinstance(v, list) else None)
def test_an_option_that_would_be_ignored_is_refused_naming_it(tmp_path, capsys, small_inputs,
                                                               argv, flag):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "x", "date": 2015}\n')
    subs = {"DATA": small_inputs["data"], "SRC": src}
    argv = [subs.get(a, a) for a in argv]
    extra = {"generate": ["--model", small_inputs["e13"], "--prompt", "a", "--device", "cpu"],
             "evaluate": ["--model", small_inputs["e13"], "--device", "cpu"],
             "train-expert": ["--data", small_inputs["data"], "--device", "cpu"],
             "prepare-data": []}[argv[0]]
    if argv[0] != "generate":
        extra += ["--out" if argv[0] in ("train-expert", "prepare-data") else "--json",
                  tmp_path / "out"]
    code, _, err = run_cli(capsys, *argv, *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{flag} has no effect here" in err
    assert not (tmp_path / "out").exists()


def test_tsqa_on_a_model_of_a_smaller_vocabulary_is_refused_not_an_index_error(
    capsys, small_inputs
):
    code, _, err = run_cli(capsys, "evaluate", "--model", small_inputs["e13"], "--tsqa",
                           "builtin", "--max-items", "2", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "vocabulary of 128" in err


@pytest.mark.parametrize("flag, name", [("--json", "r.json"), ("--plot", "p.png")])
def test_the_config_written_beside_a_report_never_replaces_a_users_file(tmp_path, capsys,
                                                                        small_inputs, flag,
                                                                        name):
    mine = tmp_path / (Path(name).stem + ".config.yaml")
    mine.write_text("my: own notes\n")
    code, _, err = run_cli(capsys, "evaluate", "--model", small_inputs["e13"], "--data",
                           small_inputs["data"], "--device", "cpu", flag, tmp_path / name)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "is not a file this command wrote" in err and mine.read_text() == "my: own notes\n"
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("flags, flag", [
    (["--strategy", "avg", "--lr", "0.5"], "--lr"),
    (["--strategy", "avg", "--data", "DATA"], "--data"),
    (["--strategy", "avg", "--max-steps", "9"], "--max-steps"),
    (["--strategy", "avg", "--router-hidden-dim", "8"], "--router-hidden-dim"),
    (["--strategy", "learned-avg", "--data", "DATA", "--policy", "inclusive",
      "--steps-per-stage", "3"], "--steps-per-stage"),
    (["--strategy", "avg", "--snapshot-dtype", "float32"], "--snapshot-dtype"),
    (["--strategy", "learned-avg", "--data", "DATA", "--policy", "inclusive",
      "--snapshot-dtype", "float32"], "--snapshot-dtype"),
], ids=["avg-lr", "avg-data", "avg-max-steps", "avg-router-dim", "inclusive-steps-per-stage",
        "avg-snapshot-dtype", "inclusive-snapshot-dtype"])
def test_train_router_refuses_options_its_strategy_ignores(tmp_path, capsys, small_inputs,
                                                           flags, flag):
    flags = [small_inputs["data"] if f == "DATA" else f for f in flags]
    code, _, err = run_cli(capsys, "train-router", "--experts", small_inputs["experts"],
                           "--out", tmp_path / "b", *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{flag} has no effect here" in err and not (tmp_path / "b").exists()


# ------------------------------------------------------------ --overwrite and links


@pytest.mark.parametrize("name", ["snapshots", "checkpoints", "wandb", "model.safetensors"])
def test_overwrite_removes_a_link_in_the_run_dir_never_what_it_points_at(tmp_path, name):
    from timoe_core.train.run_dir import open_run_dir

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("my thesis")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / name).symlink_to(mine)
    open_run_dir(run, "overwrite")
    assert not os.path.lexists(run / name) and (mine / "thesis.txt").read_text() == "my thesis"
