"""Workers and process groups: PyTorch's own launcher, started from inside the CLI.

Three ways a training command runs:

1. One process (`--nproc-per-node 1 --nnodes 1`, the default): the loop runs in the
   calling process, no process group.
2. The CLI spawns the workers itself through the elastic agent
   (`torch.distributed.launcher.api.elastic_launch`, what `torchrun` uses):
   `--nproc-per-node`, `--nnodes`, `--node-rank`, `--rdzv-endpoint HOST:PORT`,
   `--max-restarts`. One node uses a c10d rendezvous on a free local port; several
   nodes use the static rendezvous at `--rdzv-endpoint` (rank 0's host) with
   `--node-rank`, as torchrun does by default.
3. Started by an outer launcher: `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK set) or Slurm
   `srun` with several tasks (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID; then
   MASTER_ADDR/MASTER_PORT must be exported unless the step has one node). The process
   is then already one worker: it joins the process group and does not spawn again.

Workers use gloo on CPU and NCCL on CUDA (one GPU per local rank). On NCCL a second,
gloo group carries the small CPU-side control messages (the stop flag) so they never
wait on the GPU stream.

Signals: `StopRequest` turns SIGINT/SIGTERM into a flag that the loop reads between
steps; every rank agrees on it (`DistEnv.any`) so all stop after the same step, write
one checkpoint and return. Under the elastic agent a Ctrl-C reaches the agent, which
forwards it to the workers and waits `shutdown_timeout` seconds (120 by default,
TORCH_ELASTIC_SHUTDOWN_TIMEOUT overrides) before killing them.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TypeVar

import torch
import torch.distributed as dist

from timoe_core.device import resolve_device
from timoe_core.errors import TimoeError

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; rerun to resume."""

    def __init__(self, message: str = "interrupted: rerun the same command to resume") -> None:
        super().__init__(message)
        self.message = message


class WorkersFailed(Exception):
    """A spawned worker failed; it has already printed why. `code` is the exit code to use."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"a training worker failed (exit code {code})")
        self.code = code


# ------------------------------------------------------------------ environment


@dataclass(frozen=True)
class LaunchEnv:
    """Rank layout given by an outer launcher (torchrun or Slurm)."""

    rank: int
    world_size: int
    local_rank: int
    restart_count: int = 0


def outer_launch() -> LaunchEnv | None:
    """The layout set by torchrun/the elastic agent or by Slurm's srun, else None."""
    env = os.environ
    restarts = int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return LaunchEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), restarts)
    # srun with several tasks; a plain sbatch script (no job step) has no SLURM_STEP_NUM_TASKS.
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if ntasks > 1 and "SLURM_PROCID" in env:
        return LaunchEnv(int(env["SLURM_PROCID"]), ntasks, int(env.get("SLURM_LOCALID", "0")))
    return None


def _export_slurm_env(launch: LaunchEnv) -> None:
    """torch's env:// init reads RANK/WORLD_SIZE/MASTER_*: derive them from Slurm's."""
    env = os.environ
    if "RANK" in env:
        return
    if "MASTER_ADDR" not in env:
        if int(env.get("SLURM_STEP_NUM_NODES", "1") or 1) > 1:
            raise TimoeError(
                "started by srun on several nodes without MASTER_ADDR: export MASTER_ADDR "
                "(the first node's host) and MASTER_PORT in the job script"
            )
        env["MASTER_ADDR"] = "127.0.0.1"
    env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0") or 0) % 10000))
    env["RANK"] = str(launch.rank)
    env["WORLD_SIZE"] = str(launch.world_size)
    env["LOCAL_RANK"] = str(launch.local_rank)


T = TypeVar("T")
# What signal.signal installs and returns: a function, SIG_DFL/SIG_IGN, or None (not
# installed from Python).
_SignalHandler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


@dataclass
class DistEnv:
    """This process's place among the workers, and the few collectives the loop needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: a single process without a process group
    restart_count: int = 0
    _control: dist.ProcessGroup | None = None  # process group for CPU-side control messages

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier(group=self._control)

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (CPU collective)."""
        if not self.is_distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._control)
        return bool(t.item())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of a tensor on this rank's device (a new tensor)."""
        out = values.detach().clone()
        if self.is_distributed:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def gather_to_main(self, obj: T) -> list[T] | None:
        """Every rank's `obj` as a list on rank 0 (None elsewhere)."""
        if not self.is_distributed:
            return [obj]
        # rank 0's list is only room for the gather, which overwrites every entry
        out = [obj] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self._control)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (the others' `obj` is overwritten unread)."""
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def close(self) -> None:
        if self.is_distributed and dist.is_initialized():
            dist.destroy_process_group()


def _worker_store(launch: LaunchEnv, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store at MASTER_ADDR:MASTER_PORT, with keys private to this attempt.

    Under the elastic agent the store outlives a restart of the workers; without a
    per-attempt prefix, restarted workers can read the dead workers' addresses and fail
    to connect (gloo: "connectFullMesh failed ... Connection refused").
    """
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    is_master = not agent_store and launch.rank == 0
    store = dist.TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=launch.world_size,
        is_master=is_master,
        timeout=timeout,
        multi_tenant=is_master,
    )
    return dist.PrefixStore(f"timoe/attempt-{launch.restart_count}", store)


def init_workers(device_preference: str, timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group when started as one of several workers, else a 1-process env."""
    launch = outer_launch()
    if launch is None or launch.world_size == 1:
        restarts = launch.restart_count if launch else 0
        return DistEnv(device=resolve_device(device_preference), restart_count=restarts)
    _export_slurm_env(launch)
    device = resolve_device(device_preference, launch.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Several CPU workers on one machine: share the cores instead of oversubscribing.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend=backend,
        store=_worker_store(launch, timeout),
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
    )
    control = dist.new_group(backend="gloo") if backend == "nccl" else None
    return DistEnv(
        rank=launch.rank,
        world_size=launch.world_size,
        local_rank=launch.local_rank,
        device=device,
        backend=backend,
        restart_count=launch.restart_count,
        _control=control,
    )


# ---------------------------------------------------------------------- signals


class StopRequest:
    """SIGINT/SIGTERM set `requested`; the loop ends its step, checkpoints and returns.

    With `repeat_aborts` (a process the user drives directly), a second Ctrl-C raises
    KeyboardInterrupt at once; workers under a launcher get the signal twice (from the
    terminal and forwarded by the agent), so for them repeats are ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, repeat_aborts: bool = False, announce: bool = True) -> None:
        self.repeat_aborts = repeat_aborts
        self.announce = announce
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, _SignalHandler] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and self.repeat_aborts and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            self.signal_name = signal.Signals(signum).name
        if not self.requested and self.announce:
            print(
                f"\n{self.signal_name} received: finishing this step and writing a checkpoint"
                + (" (Ctrl-C again to abort without it)" if self.repeat_aborts else ""),
                file=sys.stderr,
                flush=True,
            )
        self.requested = True

    def __enter__(self) -> StopRequest:  # noqa: PYI034 (py3.10: no typing.Self)
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
