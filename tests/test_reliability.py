"""Reliability: killed runs resume exactly, workers restart, untrusted and damaged files
are refused, full or unwritable disks fail cleanly.

The kill tests run the real CLI in subprocesses (tests/kill_harness.py): one seeded kill
point per training command here; scripts/kill_sweep.py runs many.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_data_dir, one_thread, run_cli  # noqa: F401 (fixture)
from kill_harness import (
    COMMANDS,
    KillPoint,
    compare_weights,
    kill_and_resume,
    kill_when,
    reference_run,
    run,
    subprocess_env,
    weights,
)
from safetensors import SafetensorError
from safetensors.torch import load_file

from timoe_core.config import PrepareDataConfig, TrainExpertConfig
from timoe_core.data.manifest import load_manifest
from timoe_core.data.prepare import prepare_data
from timoe_core.errors import TimoeError
from timoe_core.model import weights as ckpt_io
from timoe_core.train import state as ckpt_state
from timoe_core.train.expert import train_expert
from timoe_core.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
VOCAB = 512


# ------------------------------------------------------------------ kill tests

# One seeded kill point per command: (command, kind of kill). The step is drawn from
# random.Random("command:kind"). A new training command is one more line here (and one
# entry in kill_harness.COMMANDS).
KILL_CASES = [
    ("train-expert", "before-rename"),  # inside a checkpoint write
    ("train-expert-2w", "signal"),  # kill -9 of the whole job, 2 gloo workers
    ("train-router", "after-rename"),  # learned-avg, with its log-prob cache
    ("coadapt", "signal"),
]


def _kill_point(name: str, how: str) -> KillPoint:
    cmd = COMMANDS[name]
    rng = random.Random(f"{name}:{how}")
    every = cmd.checkpoint_every
    if how == "signal":  # after the first checkpoint, 8 steps before the end
        return KillPoint(how, rng.randint(every + 2, cmd.total_steps - 8))
    return KillPoint(how, every * rng.randint(2, cmd.total_steps // every - 1))


_references: dict[str, tuple[Path, Path]] = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(inputs, uninterrupted run dir) of a command, built once per module."""

    def get(name: str) -> tuple[Path, Path]:
        if name not in _references:
            root = tmp_path_factory.mktemp(name)
            cmd = COMMANDS[name]
            inputs = cmd.setup(root / "inputs")
            _references[name] = (inputs, reference_run(cmd, inputs, root / "reference"))
        return _references[name]

    yield get
    _references.clear()


@pytest.mark.slow
@pytest.mark.parametrize("name, how", KILL_CASES, ids=[f"{n}-{h}" for n, h in KILL_CASES])
def test_sigkill_then_rerun_resumes_to_the_uninterrupted_weights(reference, tmp_path, name, how):
    cmd = COMMANDS[name]
    inputs, ref = reference(name)
    point = _kill_point(name, how)
    # kill_and_resume asserts: the kill landed (-9), the latest checkpoint is complete
    # and is the one before the kill, the rerun said it resumed from it, no temp folder
    # is left, metrics have every step once, and the final weights equal the reference.
    result = kill_and_resume(cmd, inputs, tmp_path / "run", point, ref)
    assert result.resumed_from is not None and result.resumed_from < cmd.total_steps
    if cmd.bitwise:
        assert result.max_abs_diff == 0.0


@pytest.mark.slow
def test_a_staged_router_killed_in_a_later_stage_resumes_after_the_finished_stages_were_pruned(
    tmp_path,
):
    """A finished stage keeps only its metrics (its checkpoints are removed once its
    router snapshot is saved): a kill -9 inside the next stage still resumes from that
    stage's own checkpoint and ends bitwise equal to an uninterrupted run."""
    from kill_harness import _mixture_inputs, timoe

    inputs = _mixture_inputs(tmp_path / "inputs")

    # point-in-time, monthly router stages on data dated by year: 5 stages, every year end
    # 2014-2018 (2015's and 2017's windows are read through the slices usable then)
    def argv(out: Path) -> list[str]:
        return ["train-router", "--strategy", "learned-avg",
                "--experts", str(inputs / "experts"), "--data", str(inputs / "data"),
                "--out", str(out), "--batch-size", "4", "--steps-per-stage", "8",
                "--checkpoint-every", "2", "--log-every", "1", "--device", "cpu"]

    ref = tmp_path / "ref"
    assert run(argv(ref)).returncode == 0
    out = tmp_path / "run"
    second = out / "stages" / "2016-12-31"

    def in_second_stage() -> bool:
        return second.is_dir() and any(r.get("step", 0) >= 5 for r in read_metrics(second)
                                       if r.get("type") == "train")

    assert kill_when(timoe(argv(out)), in_second_stage) == -signal.SIGKILL
    first = out / "stages" / "2014-12-31"
    assert sorted(p.name for p in first.iterdir()) == ["metrics.jsonl"]  # pruned
    latest = ckpt_state.latest_checkpoint(second)
    assert latest is not None and 4 <= latest.step < 8
    again = run(argv(out))
    assert again.returncode == 0, again.stderr
    assert f"resuming from {latest.path} (step {latest.step}/" in again.stdout, again.stdout
    assert all(sorted(p.name for p in d.iterdir()) == ["metrics.jsonl"]
               for d in (out / "stages").iterdir())
    routers = {p.relative_to(out): load_file(p) for p in sorted(out.rglob("router.safetensors"))}
    expected = {p.relative_to(ref): load_file(p) for p in sorted(ref.rglob("router.safetensors"))}
    assert routers.keys() == expected.keys() and len(routers) == 6  # 5 snapshots + latest
    for k, tensors in routers.items():
        assert all(torch.equal(v, expected[k][n]) for n, v in tensors.items()), k


@pytest.mark.slow
def test_a_worker_killed_under_max_restarts_is_restarted_and_the_run_continues(reference, tmp_path):
    cmd = COMMANDS["train-expert-2w"]
    inputs, ref = reference(cmd.name)
    out, marker = tmp_path / "run", tmp_path / "rank1-died"
    # Rank 1 SIGKILLs itself after step 10, once (the marker stops the restarted one).
    r = run(
        cmd.argv(inputs, out) + ["--max-restarts", "1"],
        TIMOE_TEST_FAIL_RANK=f"1:10:{marker}",
    )
    assert r.returncode == 0, r.stderr
    assert marker.exists()  # the fault really happened
    assert "resuming from" in r.stdout and "(step 8/40)" in r.stdout  # the checkpoint at 8
    steps = [m["step"] for m in read_metrics(out) if m["type"] == "train"]
    assert steps == list(range(1, 41))
    compare_weights(weights(ref), weights(out), bitwise=False)


# --------------------------------------------------------- in-process resume


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("rel"), vocab_size=VOCAB, seq_len=32)


def cfg(data, out, **kw) -> TrainExpertConfig:
    base = {"year": 2013, "data": data, "out": out, "seq_len": 32, "batch_size": 4}
    base |= {"n_layer": 1, "n_embd": 32, "n_head": 2, "log_every": 5, "device": "cpu"}
    base |= {"max_steps": 8, "checkpoint_every": 4, "snapshots": "none"}  # one budget
    return TrainExpertConfig(**(base | kw))


def _args(data, out, *extra) -> list[str]:
    return [
        "train-expert", "--year", "2013", "--data", data, "--out", out, "--seq-len", "32",
        "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--batch-size", "4",
        "--max-steps", "8", "--checkpoint-every", "4", "--device", "cpu",
        "--snapshots", "none", *extra,  # one run with one --max-steps budget
    ]  # fmt: skip


@pytest.mark.usefixtures("one_thread")
def test_a_rerun_after_a_kill_before_publishing_restores_the_run_dir_weights(data, tmp_path):
    # A kill after the final checkpoint's rename but before its weights were linked into
    # the run dir leaves RUN_DIR/model.safetensors one checkpoint behind; the rerun has
    # nothing to train but must still publish the latest checkpoint.
    run_dir = train_expert(cfg(data, tmp_path / "r"))
    ckpts = ckpt_state.list_checkpoints(run_dir)
    assert [c.step for c in ckpts] == [4, 8]
    (run_dir / "model.safetensors").unlink()
    os.link(ckpts[0].path / "model.safetensors", run_dir / "model.safetensors")
    train_expert(cfg(data, tmp_path / "r"))
    assert (run_dir / "model.safetensors").samefile(ckpts[1].path / "model.safetensors")


def _disk_full_after(nbytes: int):
    """A safetensors writer that writes `nbytes` and then fails as a full disk does."""

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * nbytes)
        raise SafetensorError(
            f"Error while serializing: I/O error: No space left on device (os error 28) at "
            f'path "{filename}"'
        )

    return save_file


@pytest.mark.usefixtures("one_thread")
def test_disk_full_during_a_checkpoint_keeps_the_previous_one_latest(
    data, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "r"
    assert run_cli(capsys, *_args(data, out, "--stop-at-step", "4"))[0] == 0
    before = load_file(str(out / "model.safetensors"))
    monkeypatch.setattr(ckpt_io, "save_safetensors", _disk_full_after(100))
    code, _, err = run_cli(capsys, *_args(data, out))
    monkeypatch.undo()
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for words in ("checkpoint of step 8", "No space left on device", "step 4 is intact",
                  "free disk space", "rerun the same command"):  # fmt: skip
        assert words in err, (words, err)
    latest = ckpt_state.latest_checkpoint(out)
    assert latest.step == 4
    ckpt_state.load_trainer_state(latest)  # complete, checksums match
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000004"]  # no temp
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Space is back: the same command resumes and ends where an uninterrupted run does.
    assert run_cli(capsys, *_args(data, out))[0] == 0
    assert run_cli(capsys, *_args(data, tmp_path / "u"))[0] == 0
    compare_weights(weights(tmp_path / "u"), weights(out), bitwise=True)


def test_the_oserror_of_a_full_disk_is_named_even_from_the_trainer_state(tmp_path, monkeypatch):
    def save_weights(directory):
        (directory / "model.safetensors").write_bytes(b"w")

    minimal = {"tokens": 0, "elapsed": 0.0, "data": {}, "optimizer": {}, "schedule": {}}
    minimal |= {"rng": [], "world_size": 1}
    ckpt_state.write_checkpoint(tmp_path, 2, save_weights, minimal)

    def full(obj, path, *a, **k):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ckpt_state.torch, "save", full)
    with pytest.raises(TimoeError, match="No space left on device.*step 2 is intact"):
        ckpt_state.write_checkpoint(tmp_path, 4, save_weights, minimal)
    assert [c.step for c in ckpt_state.list_checkpoints(tmp_path)] == [2]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002"]


# ----------------------------------------------------------- untrusted files


class _RunsCode:
    """A pickle payload that runs a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_trainer_state_that_would_run_code_is_refused_and_runs_nothing(data, tmp_path, capsys):
    # The payload is live: a plain unpickler runs it (proof the test means something).
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps({"x": _RunsCode(proof)}))
    assert proof.exists()

    out = tmp_path / "r"
    assert run_cli(capsys, *_args(data, out, "--stop-at-step", "4"))[0] == 0
    ckpt = ckpt_state.latest_checkpoint(out)
    marker = tmp_path / "pwned"
    good = torch.load(ckpt.state_path, weights_only=True)
    # Two forms: torch's own zip format (what a doctored download would be) holding the
    # real trainer state plus the payload, and a bare pickle.
    for write in (
        lambda p: torch.save(good | {"extra": _RunsCode(marker)}, p),
        lambda p: p.write_bytes(pickle.dumps(good | {"extra": _RunsCode(marker)})),
    ):
        write(ckpt.state_path)
        with pytest.raises(TimoeError, match="trainer_state.pt is corrupt"):
            ckpt_state.load_trainer_state(ckpt)
        code, _, err = run_cli(capsys, *_args(data, out))  # the CLI resuming from it
        assert code == 2 and "trainer_state.pt is corrupt" in err, err
        assert "refused by the safe loader" in err and "never load it with" in err
        assert "will likely succeed" not in err  # torch's advice to disable the check
        assert len(err.strip().splitlines()) == 1
        assert not marker.exists()
    assert ckpt_state.latest_checkpoint(out).step == 4  # nothing trained from it


def test_resuming_on_data_with_another_tokenizer_names_the_fields(data, tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli(capsys, *_args(data, out, "--max-steps", "2"))[0] == 0
    other = make_data_dir(tmp_path, vocab_size=1000, seq_len=32, name="other")
    before = sorted(str(p) for p in out.rglob("*"))
    code, _, err = run_cli(capsys, *_args(other, out, "--max-steps", "4"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for words in ("cannot resume", "tokenizer (--data)", "'vocab_size': 1000",
                  "vocab size (--data) (run has 512, flags give 1024)",  # padded to 64s
                  "data (the token files of --data it reads)"):  # fmt: skip
        assert words in err, (words, err)
    assert sorted(str(p) for p in out.rglob("*")) == before


def test_weights_that_do_not_match_their_config_name_the_tensors(data, tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli(capsys, *_args(data, out, "--max-steps", "2"))[0] == 0
    info = json.loads((out / "run.json").read_text())
    info["model_config"]["n_embd"] = 64
    (out / "run.json").write_text(json.dumps(info))
    with pytest.raises(TimoeError) as exc:
        ckpt_io.load_expert(out)
    assert "wte.weight has shape (512, 32), the config gives (512, 64)" in str(exc.value)
    assert "run.json" in str(exc.value)


# ---------------------------------------------------------------- data files


def _truncate(path: Path, nbytes: int = 2) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - nbytes)


def test_a_truncated_token_file_is_refused_naming_it(tmp_path, capsys):
    data = make_data_dir(tmp_path, vocab_size=VOCAB, seq_len=32)
    _truncate(data / "train" / "2013.bin")
    code, _, err = run_cli(capsys, *_args(data, tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "train/2013.bin has 8190 bytes, the manifest says 8192" in err
    assert not (tmp_path / "r").exists()


def test_sha256_verification_is_opt_in_and_catches_a_changed_byte(tmp_path, monkeypatch):
    data = make_data_dir(tmp_path, vocab_size=VOCAB, seq_len=32)
    f = data / "val" / "2014.bin"
    blob = bytearray(f.read_bytes())
    blob[10] ^= 0x01  # same size, other content
    f.write_bytes(bytes(blob))
    load_manifest(data)  # default: sizes only (free); a changed byte passes
    with pytest.raises(TimoeError, match=r"val/2014.bin fails its sha256 check"):
        load_manifest(data, verify="sha256")
    monkeypatch.setenv("TIMOE_VERIFY_DATA", "sha256")
    with pytest.raises(TimoeError, match=r"val/2014.bin fails its sha256 check"):
        load_manifest(data)
    monkeypatch.setenv("TIMOE_VERIFY_DATA", "everything")
    with pytest.raises(TimoeError, match="TIMOE_VERIFY_DATA='everything' must be none, size"):
        load_manifest(data)


def _corpus(path: Path, n: int) -> Path:
    rng = random.Random(0)
    words = [
        "river",
        "council",
        "market",
        "election",
        "school",
        "price",
        "energy",
        "team",
        "city",
        "report",
    ]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            body = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
            f.write(json.dumps({"text": f"Doc {i}. {body}", "date": 2013 + i % 12}) + "\n")
    return path


@pytest.mark.slow
def test_prepare_data_killed_midway_then_rerun_restarts_cleanly(tmp_path):
    src = _corpus(tmp_path / "corpus.jsonl", 40000)  # ~6 MB: two read batches
    work = tmp_path / "work"
    work.mkdir()
    argv = [sys.executable, "-m", "timoe_cli", "prepare-data", "--source", str(src),
            "--out", str(work / "data"), "--workers", "1", "--seq-len", "64"]  # fmt: skip
    code = kill_when(argv, lambda: bool(list(work.glob(".data.partial-*/train/*.bin"))), 120)
    assert code == -signal.SIGKILL
    assert not (work / "data").exists() and list(work.rglob("manifest.json")) == []
    assert len(list(work.glob(".data.partial-*"))) == 1  # what the kill left
    again = subprocess.run(argv, capture_output=True, text=True, env=subprocess_env(), check=False)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in work.iterdir()) == ["data"]  # the leftover was removed
    m = load_manifest(work / "data", verify="sha256")
    fresh = prepare_data(
        PrepareDataConfig(source=str(src), out=tmp_path / "fresh", workers=1, seq_len=64)
    )
    assert m.files == fresh.files and m.years == fresh.years  # a clean restart, same bytes
    assert not (work / "data" / ".owner").exists()


def test_a_staging_folder_of_a_live_run_is_left_alone(tmp_path):
    from timoe_core.data.output_dir import owner_tag

    src = _corpus(tmp_path / "c.jsonl", 50)
    live = tmp_path / ".data.partial-live"
    live.mkdir()
    (live / ".owner").write_text(owner_tag())  # this very process: alive
    dead = tmp_path / ".data.partial-dead"
    dead.mkdir()
    (dead / ".owner").write_text(f"{socket.gethostname()} {_dead_pid()}")
    foreign = tmp_path / ".data.partial-other-host"
    foreign.mkdir()
    (foreign / ".owner").write_text("some-other-host 1")
    prepare_data(PrepareDataConfig(source=str(src), out=tmp_path / "data", workers=1, seq_len=16))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([".data.partial-live", ".data.partial-other-host", "c.jsonl", "data"])


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------- unwritable --out


def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (chmod, or /sys when root)."""
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0o555)
    for candidate in (d, Path("/sys")):
        try:
            (candidate / ".probe").touch()
        except OSError:
            return candidate
        (candidate / ".probe").unlink()
    pytest.skip("no unwritable folder on this machine")


@pytest.mark.parametrize("command", ["train-expert", "prepare-data"])
def test_an_unwritable_out_is_refused_before_any_work(data, tmp_path, capsys, command):
    locked = _unwritable_dir(tmp_path)
    src = _corpus(tmp_path / "c.jsonl", 20)
    (tmp_path / "a-file").write_text("x")
    for out, words in (
        (locked / "run", "is not writable"),
        (tmp_path / "a-file" / "run", "a-file is a file, not a folder"),
    ):
        if command == "train-expert":
            args = _args(data, out)
        else:
            args = ["prepare-data", "--source", src, "--out", out, "--workers", "1"]
        code, stdout, err = run_cli(capsys, *args)
        assert code == 2, (stdout, err)
        assert words in err and "--out" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out.exists()
    (tmp_path / "locked").chmod(0o755)
