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

import contextlib
import datetime
import hashlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from timoe_core.device import resolve_device
from timoe_core.errors import TimoeError
from timoe_core.lock import output_lock

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


@dataclass
class DistEnv:
    """This process's place among the workers, and the few collectives the loop needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None: a single process without a process group
    restart_count: int = 0
    _control: Any = None  # process group for CPU-side control messages

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

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` as a list on rank 0 (None elsewhere)."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self._control)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.is_distributed:
            return obj
        box = [obj if self.is_main else None]
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
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
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


# ---------------------------------------------------------------------- launching


@dataclass(frozen=True)
class LaunchSpec:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    max_restarts: int = 0
    run_id: str = "timoe"

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @classmethod
    def from_config(cls, cfg: Any, run_dir: Path | None = None) -> LaunchSpec:
        """The layout a TrainingConfig asks for; the run id is derived from the run dir so
        every node of a run computes the same one."""
        return cls(
            nproc_per_node=cfg.nproc_per_node,
            nnodes=cfg.nnodes,
            node_rank=cfg.node_rank,
            rdzv_endpoint=cfg.rdzv_endpoint,
            max_restarts=cfg.max_restarts,
            run_id=run_id_for(str(Path(run_dir).resolve())) if run_dir is not None else "timoe",
        )


def check_launch_spec(spec: LaunchSpec) -> None:
    """Bad worker flags as TimoeErrors, before anything is started or written."""
    if spec.nproc_per_node < 1:
        raise TimoeError(f"--nproc-per-node must be at least 1, got {spec.nproc_per_node}")
    if spec.nnodes < 1:
        raise TimoeError(f"--nnodes must be at least 1, got {spec.nnodes}")
    if not 0 <= spec.node_rank < spec.nnodes:
        raise TimoeError(f"--node-rank {spec.node_rank} must be in 0..{spec.nnodes - 1}")
    if spec.nnodes > 1:
        if not spec.rdzv_endpoint:
            raise TimoeError(
                f"--nnodes {spec.nnodes} needs --rdzv-endpoint HOST:PORT (node rank 0's address)"
            )
        host, _, port = spec.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise TimoeError(f"--rdzv-endpoint must be HOST:PORT, got {spec.rdzv_endpoint!r}")


def check_launch(cfg: Any, world_size: int | None = None) -> int:
    """Check a training command's worker flags against this machine, before anything is
    started or written; returns the job's world size (`world_size` when given, else an
    outer launcher's, else the flags')."""
    spec = LaunchSpec.from_config(cfg)
    check_launch_spec(spec)
    outer = outer_launch()
    if world_size is None:
        world_size = outer.world_size if outer is not None else spec.world_size
    device = resolve_device(cfg.device)
    if device.type == "cuda" and outer is None and cfg.nproc_per_node > torch.cuda.device_count():
        raise TimoeError(
            f"--nproc-per-node {cfg.nproc_per_node} exceeds the {torch.cuda.device_count()} "
            "GPUs of this machine"
        )
    return world_size


def run_id_for(key: str) -> str:
    """A launcher run id that every node computes alike from the same run dir."""
    return "timoe-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def launch(entry: Callable[[Any], int], payload: Any, spec: LaunchSpec) -> int:
    """Run `entry(payload)` on every worker and return the exit code to use.

    `entry` must be a module-level function (it is pickled by reference into spawned
    processes) that returns EXIT_OK, EXIT_BAD_INPUT or EXIT_INTERRUPTED.
    Already inside an outer launcher, or with one worker in all: runs in this process.
    Raises TrainingInterrupted when the agent was stopped by a signal, WorkersFailed when
    a worker failed beyond its restarts.
    """
    check_launch_spec(spec)
    if outer_launch() is not None or spec.world_size == 1:
        return entry(payload)

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _quiet_elastic_logs()

    if spec.nnodes == 1 and not spec.rdzv_endpoint:
        # As `torchrun --standalone`: a fresh c10d store on a free local port.
        backend, endpoint, rdzv_configs = "c10d", "localhost:0", {}
    elif spec.nnodes == 1:
        backend, endpoint, rdzv_configs = "c10d", spec.rdzv_endpoint, {}
    else:
        backend, endpoint = "static", spec.rdzv_endpoint
        rdzv_configs = {"rank": spec.node_rank}
    config = LaunchConfig(
        min_nodes=spec.nnodes,
        max_nodes=spec.nnodes,
        nproc_per_node=spec.nproc_per_node,
        run_id=spec.run_id,
        rdzv_backend=backend,
        rdzv_endpoint=endpoint or "",
        rdzv_configs=rdzv_configs,
        max_restarts=spec.max_restarts,
        start_method="spawn",
        monitor_interval=0.1,
        logs_specs=DefaultLogsSpecs(),
        shutdown_timeout=int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "120")),
    )
    try:
        results = elastic_launch(config, run_worker)(entry, payload)
    except SignalException as exc:
        raise TrainingInterrupted(
            f"interrupted by {exc.sigval.name}: rerun the same command to resume "
            "from the last checkpoint"
        ) from None
    except ChildFailedError as exc:
        codes = sorted({f.exitcode for f in exc.failures.values()})
        if codes == [EXIT_INTERRUPTED]:
            raise TrainingInterrupted() from None
        ranks = ", ".join(str(r) for r in sorted(exc.failures))
        code = EXIT_BAD_INPUT if codes == [EXIT_BAD_INPUT] else 1
        raise WorkersFailed(code, f"worker rank(s) {ranks} failed (exit codes {codes})") from None
    codes = [int(c or 0) for c in results.values()]
    return max(codes) if codes else EXIT_OK


def run_dir_lock(cfg: Any, outer: LaunchEnv | None) -> contextlib.AbstractContextManager:
    """The exclusive write lock of `cfg.out` (timoe_core.lock), held for the whole job by
    the one process that owns the run dir: this launcher on node 0, or rank 0 under an
    outer launcher. A second job on the same --out is exit 2 naming the holder."""
    if cfg.out is None or cfg.node_rank != 0 or (outer is not None and outer.rank != 0):
        return contextlib.nullcontext()
    return output_lock(cfg.out)


def train_or_launch(
    payload: dict[str, Any],
    cfg: Any,
    run_dir: Path,
    world_size: int,
    outer: LaunchEnv | None,
    prepare: Callable[[], None],
    train_here: Callable[[dict[str, Any]], Any],
    worker: Callable[[dict[str, Any]], int],
) -> bool:
    """Prepare the run dir and train; True when Ctrl-C/SIGTERM stopped the run (after a
    checkpoint). Under an outer launcher (torchrun, Slurm) the run dir is already
    prepared and this process is one worker; otherwise node 0 prepares it, and training
    runs in this process (one worker) or in workers spawned by the elastic agent."""
    if outer is None:
        if cfg.node_rank == 0:  # with several nodes, node 0 prepares the (shared) run dir
            prepare()
        payload["prepared"] = True
    if outer is not None or world_size == 1:
        return bool(train_here(payload).interrupted)
    try:
        return launch(worker, payload, LaunchSpec.from_config(cfg, run_dir)) == EXIT_INTERRUPTED
    except TrainingInterrupted:
        return True


def _quiet_elastic_logs() -> None:
    """The agent logs each signal and shutdown as warnings; our own lines say it better."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.ERROR)


def run_worker(entry: Callable[[Any], int], payload: Any) -> int:
    """A spawned worker: `entry(payload)`; a TimoeError prints one line and returns 2.

    Returning (rather than raising) keeps the agent from restarting a worker whose input
    is wrong.
    """
    try:
        return entry(payload)
    except TimoeError as exc:
        rank = os.environ.get("RANK", "0")
        print(f"error: {str(exc).replace(chr(10), ' ')} (rank {rank})", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
