"""Kill a training command with SIGKILL at a chosen point, rerun it, and compare.

Used by tests/test_reliability.py (one kill point per command) and by
scripts/kill_sweep.py (many seeded random points per command).

A command is a `TrainCommand`: how to build its inputs once, its argv for an output
dir, and its total steps and checkpoint interval. Adding a training command to both the
tests and the sweep is one more entry in `COMMANDS`.

Kill points (`KillPoint`):
    signal         the test sends SIGKILL to the command's whole process group (what a
                   scheduler's kill or the OOM killer does to a job) as soon as the run
                   has logged step `step`: it lands wherever the run then is (inside a
                   step, an eval, a checkpoint write).
    before-rename  the command kills its own process group while writing checkpoint
                   `step`, after the temp folder is complete and before its rename
                   (hook TIMOE_TEST_KILL_CHECKPOINT in timoe_core/train/state.py).
    after-rename   the same, after the rename and before the run dir's weights are
                   published.
The rerun is the same argv without any hook: it must resume from the last complete
checkpoint and end with the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers import make_data_dir

from timoe_core.train import state as ckpt_state
from timoe_core.train.metrics import read_metrics

KILL_HOWS = ("signal", "before-rename", "after-rename")
VOCAB = 512


@dataclass(frozen=True)
class KillPoint:
    how: str
    step: int

    def __str__(self) -> str:
        return f"{self.how}@{self.step}"


@dataclass(frozen=True)
class TrainCommand:
    """A training command under test. `argv(inputs, out)` is the argv after `timoe`."""

    name: str
    setup: Callable[[Path], Path]  # builds the inputs under a folder; returns it
    argv: Callable[[Path, Path], list[str]]
    total_steps: int
    checkpoint_every: int
    nproc: int = 1

    @property
    def bitwise(self) -> bool:
        """One process: bitwise equal to an uninterrupted run; several: allclose."""
        return self.nproc == 1


def _expert_inputs(root: Path) -> Path:
    make_data_dir(root, vocab_size=VOCAB, seq_len=32)
    return root


def _expert_argv(nproc: int, steps: int, every: int) -> Callable[[Path, Path], list[str]]:
    def argv(inputs: Path, out: Path) -> list[str]:
        return [
            "train-expert", "--year", "2013", "--data", str(inputs / "data"), "--out", str(out),
            "--seq-len", "32", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
            "--dropout", "0.1", "--batch-size", "2", "--max-steps", str(steps),
            "--checkpoint-every", str(every), "--log-every", "1", "--device", "cpu",
            "--nproc-per-node", str(nproc),
            "--snapshots", "none",  # one run with one --max-steps budget (staged: elsewhere)
        ]  # fmt: skip

    return argv


def _mixture_inputs(root: Path) -> Path:
    from helpers import make_mixture_inputs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: no faster on more, slower on busy cores
    try:
        make_mixture_inputs(root, steps=10)  # data/ and experts/ under root
    finally:
        torch.set_num_threads(threads)
    return root


def _mixture_argv(
    command: list[str], nproc: int, steps: int, every: int
) -> Callable[[Path, Path], list[str]]:
    def argv(inputs: Path, out: Path) -> list[str]:
        return [
            *command, "--experts", str(inputs / "experts"), "--data", str(inputs / "data"),
            "--out", str(out), "--batch-size", "4", "--max-steps", str(steps),
            "--checkpoint-every", str(every), "--log-every", "1", "--device", "cpu",
            "--nproc-per-node", str(nproc),
            "--policy", "inclusive",  # one router over every year (staged: elsewhere)
        ]  # fmt: skip

    return argv


ROUTER = ["train-router", "--strategy", "learned-avg"]

# 60 router steps of 4 windows read 240 of the 186 windows: the log-prob cache is built
# and read back, and the run crosses an epoch.
COMMANDS: dict[str, TrainCommand] = {
    "train-expert": TrainCommand(
        "train-expert", _expert_inputs, _expert_argv(1, 40, 4), total_steps=40,
        checkpoint_every=4,
    ),
    "train-expert-2w": TrainCommand(
        "train-expert-2w", _expert_inputs, _expert_argv(2, 40, 4), total_steps=40,
        checkpoint_every=4, nproc=2,
    ),
    "train-router": TrainCommand(
        "train-router", _mixture_inputs, _mixture_argv(ROUTER, 1, 60, 4), total_steps=60,
        checkpoint_every=4,
    ),
    "train-router-2w": TrainCommand(
        "train-router-2w", _mixture_inputs, _mixture_argv(ROUTER, 2, 30, 4), total_steps=30,
        checkpoint_every=4, nproc=2,
    ),
    "coadapt": TrainCommand(
        "coadapt", _mixture_inputs, _mixture_argv(["coadapt"], 1, 40, 4), total_steps=40,
        checkpoint_every=4,
    ),
    "coadapt-2w": TrainCommand(
        "coadapt-2w", _mixture_inputs, _mixture_argv(["coadapt"], 2, 40, 4), total_steps=40,
        checkpoint_every=4, nproc=2,
    ),
}  # fmt: skip


def random_kill_point(cmd: TrainCommand, rng: random.Random) -> KillPoint:
    """A seeded kill point: a kind, then a step that leaves the run something to do."""
    how = rng.choice(KILL_HOWS)
    if how == "signal":  # leave >= 8 steps so the kill lands before the run ends
        return KillPoint(how, rng.randint(2, cmd.total_steps - 8))
    every = cmd.checkpoint_every
    return KillPoint(how, every * rng.randint(1, cmd.total_steps // every))


# ------------------------------------------------------------------- processes


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TIMOE_TEST_KILL_CHECKPOINT"):
        env.pop(var, None)  # not inside an outer launcher, no leftover hook
    env.setdefault("OMP_NUM_THREADS", "1")  # exact reruns and no spin-waiting on busy cores
    env.setdefault("WANDB_MODE", "disabled")
    return env | extra


def timoe(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "timoe_cli", *argv]


def run(argv: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        timoe(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(**env),
        check=False,
    )


def _wait_group_gone(pgid: int, timeout: float = 60) -> None:
    """Wait until no process of the group is left (workers die with the job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError(f"processes of group {pgid} outlived the kill")


def _logged_step(out: Path) -> int:
    steps = [r["step"] for r in read_metrics(out) if r.get("type") == "train"]
    return max(steps, default=0)


def run_killed(argv: list[str], out: Path, point: KillPoint, timeout: float = 300) -> int:
    """Run `argv` in its own process group and SIGKILL the group at `point`; returns the
    command's exit status (-9 when the kill landed; anything else means it did not)."""
    env = {}
    if point.how != "signal":
        env["TIMOE_TEST_KILL_CHECKPOINT"] = f"{point.step}:{point.how}"
    proc = subprocess.Popen(
        timoe(argv),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=subprocess_env(**env),
        start_new_session=True,  # its own process group: the job a scheduler would kill
    )
    pgid = proc.pid
    deadline = time.monotonic() + timeout
    try:
        if point.how == "signal":
            while proc.poll() is None and _logged_step(out) < point.step:
                assert time.monotonic() < deadline, "the run never reached the kill step"
                time.sleep(0.005)
            if proc.poll() is None:
                os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait()
    _wait_group_gone(pgid)
    return proc.returncode


def kill_when(argv: list[str], ready: Callable[[], bool], timeout: float = 60) -> int:
    """Start `argv` (a full command line), SIGKILL it as soon as `ready()` holds; returns
    its exit status (-9). Fails if it ends first or `ready` never holds in `timeout` s."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env()
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


# ------------------------------------------------------------------- checking


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every safetensors file the run dir publishes (its latest checkpoint's), by path."""
    out = {}
    for f in sorted(Path(run_dir).rglob("*.safetensors")):
        rel = f.relative_to(run_dir)
        if rel.parts[0] == ckpt_state.CHECKPOINTS_DIRNAME:
            continue
        for k, v in load_file(str(f)).items():
            out[f"{rel}:{k}"] = v
    return out


def compare_weights(a: dict, b: dict, bitwise: bool) -> float:
    """Max abs difference; raises AssertionError when not equal (bitwise) / not close."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    worst = 0.0
    for k, v in a.items():
        if bitwise:
            assert torch.equal(v, b[k]), k
        else:
            torch.testing.assert_close(v, b[k], rtol=1e-5, atol=1e-6, msg=k)
        worst = max(worst, (v.float() - b[k].float()).abs().max().item())
    return worst


@dataclass
class KillResult:
    point: KillPoint
    killed_rc: int
    resumed_from: int | None  # the latest complete checkpoint after the kill
    max_abs_diff: float
    seconds: float


def kill_and_resume(
    cmd: TrainCommand, inputs: Path, out: Path, point: KillPoint, reference: Path
) -> KillResult:
    """Kill `cmd` at `point`, rerun it, check the resume and the final weights."""
    t0 = time.perf_counter()
    argv = cmd.argv(inputs, out)
    rc = run_killed(argv, out, point)
    assert rc == -signal.SIGKILL, f"the kill at {point} did not land (exit status {rc})"
    latest = ckpt_state.latest_checkpoint(out)
    if latest is not None:
        ckpt_state.load_trainer_state(latest)  # complete: every file matches its sha256
    if point.how == "before-rename":  # the checkpoint being written never appeared
        assert latest is None or latest.step == point.step - cmd.checkpoint_every, latest
    elif point.how == "after-rename":  # it is complete, the run dir not yet pointed at it
        assert latest is not None and latest.step == point.step
    again = run(argv)
    assert again.returncode == 0, again.stderr
    if latest is not None:
        assert f"resuming from {latest.path} (step {latest.step}/" in again.stdout, again.stdout
    assert not [p for p in ckpt_state.checkpoints_dir(out).iterdir() if p.name.startswith(".")]
    final = ckpt_state.latest_checkpoint(out)
    assert final is not None and final.step == cmd.total_steps
    steps = [r["step"] for r in read_metrics(out) if r.get("type") == "train"]
    assert steps == list(range(1, cmd.total_steps + 1)), steps  # no gap, no repeat
    diff = compare_weights(weights(reference), weights(out), cmd.bitwise)
    return KillResult(point, rc, latest.step if latest else None, diff, time.perf_counter() - t0)


def reference_run(cmd: TrainCommand, inputs: Path, out: Path) -> Path:
    """The uninterrupted run the killed ones must match."""
    r = run(cmd.argv(inputs, out))
    assert r.returncode == 0, r.stderr
    return out


def describe(result: KillResult) -> str:
    return json.dumps(
        {
            "point": str(result.point),
            "resumed_from": result.resumed_from,
            "max_abs_diff": result.max_abs_diff,
            "seconds": round(result.seconds, 1),
        }
    )
