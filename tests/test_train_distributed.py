"""Workers: the launcher from inside the CLI (2 gloo processes), outer launchers, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import make_data_dir

from timoe_core.data.windows import TokenWindows
from timoe_core.errors import TimoeError
from timoe_core.train import state as ckpt_state
from timoe_core.train.distributed import StopRequest, outer_launch
from timoe_core.train.launch import LaunchSpec, check_launch_spec, launch
from timoe_core.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("dist"), vocab_size=512)


def cli(data, out, *args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "timoe_cli",
        "train-expert",
        "--year",
        "2013",
        "--data",
        str(data),
        "--out",
        str(out),
        "--seq-len",
        "32",
        "--device",
        "cpu",
        "--snapshots",  # one run with one --max-steps budget (staged runs: test_train_expert)
        "none",
        *map(str, args),
    ]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=180, env=subprocess_env()
    )


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # not inside an outer launcher
        env.pop(var, None)
    return env


@pytest.mark.slow
def test_two_gloo_workers_read_disjoint_windows_and_rank0_writes_one_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    args = ["--max-steps", 4, "--batch-size", 2, "--grad-accum", 2, "--nproc-per-node", 2]
    r = run(cli(data, out, *args, "--log-windows", "--log-every", 1))
    assert r.returncode == 0, r.stderr
    per_rank = {}
    for rank in (0, 1):
        lines = (out / "debug" / f"windows-rank{rank}.jsonl").read_text().splitlines()
        per_rank[rank] = [json.loads(line) for line in lines]
        assert [x["step"] for x in per_rank[rank]] == [0, 1, 2, 3]
        assert all(len(x["windows"]) == 4 for x in per_rank[rank])  # 2 x grad-accum 2
    read0 = {i for x in per_rank[0] for i in x["windows"]}
    read1 = {i for x in per_rank[1] for i in x["windows"]}
    assert len(read0) == 16 and len(read1) == 16 and not read0 & read1  # disjoint
    # Together they read the first 4 global batches of the epoch's permutation.
    perm = TokenWindows(data, "train", [2013, 2014], 32).shuffled_indices(0, 0)
    assert read0 | read1 == set(perm[:32].tolist())
    # Rank 0 alone wrote: one checkpoint, one line per logged step.
    assert [c.step for c in ckpt_state.list_checkpoints(out)] == [4]
    state = ckpt_state.load_trainer_state(ckpt_state.latest_checkpoint(out))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["data"] == {"epoch": 0, "offset": 32}
    steps = [m["step"] for m in read_metrics(out) if m["type"] == "train"]
    assert steps == [1, 2, 3, 4]
    assert r.stdout.count("trained ") == 1


def _start_and_interrupt(
    cmd: list[str], out: Path, after_records: int
) -> subprocess.CompletedProcess:
    """Start a training run, send SIGINT to it once it has logged, wait for it to exit."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env()
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(r.get("type") == "train" for r in read_metrics(out)) >= after_records:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before the signal"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_c_checkpoints_exits_130_and_the_rerun_resumes(data, tmp_path, nproc):
    out = tmp_path / "run"
    args = ["--batch-size", "2", "--log-every", "1", "--nproc-per-node", nproc]
    r = _start_and_interrupt(cli(data, out, "--max-steps", "5000", *args), out, after_records=2)
    assert r.returncode == 130, r.stderr
    assert "rerun the same command to resume" in r.stderr
    assert "Traceback" not in r.stderr
    ckpt = ckpt_state.latest_checkpoint(out)
    assert ckpt is not None and ckpt.step >= 2
    assert f"step {ckpt.step}" in r.stderr
    ckpt_state.load_trainer_state(ckpt)  # complete and consistent
    if nproc == 1:
        return  # one process resuming is covered in-process by test_train_loop.py
    # The rerun (with a budget that ends soon) continues from the checkpoint.
    again = run(cli(data, out, "--max-steps", ckpt.step + 2, *args))
    assert again.returncode == 0, again.stderr
    assert f"resuming from {ckpt.path}" in again.stdout
    assert ckpt_state.latest_checkpoint(out).step == ckpt.step + 2


# ------------------------------------------------------------------ in-process


def test_outer_launchers_are_detected(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    assert outer_launch() is None
    # A plain sbatch script (no srun job step) is not a launcher.
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert outer_launch() is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert (outer_launch().rank, outer_launch().world_size, outer_launch().local_rank) == (3, 4, 1)
    monkeypatch.setenv("RANK", "1")  # torchrun wins
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    got = outer_launch()
    assert (got.rank, got.world_size, got.restart_count) == (1, 2, 2)


def _entry(payload):
    return payload["code"]


def test_one_worker_or_an_outer_launcher_runs_in_this_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    assert launch(_entry, {"code": 7}, LaunchSpec()) == 7
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launch(_entry, {"code": 5}, LaunchSpec(nproc_per_node=4)) == 5  # no re-spawn


@pytest.mark.parametrize(
    "spec, words",
    [
        (LaunchSpec(nproc_per_node=0), "--nproc-per-node"),
        (LaunchSpec(nnodes=2), "--rdzv-endpoint"),
        (LaunchSpec(nnodes=2, rdzv_endpoint="host"), "HOST:PORT"),
        (LaunchSpec(nnodes=2, node_rank=2, rdzv_endpoint="h:1"), "--node-rank"),
    ],
)
def test_bad_worker_layouts(spec, words):
    with pytest.raises(TimoeError, match=words):
        check_launch_spec(spec)


def test_stop_request_turns_signals_into_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest(repeat_aborts=True, announce=False) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C again: abort now
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    with StopRequest(repeat_aborts=False, announce=False) as stop:  # a worker: repeats ignored
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
