"""Launching a training job's workers: the layout the flags ask for (`LaunchSpec`, checked
before anything starts), PyTorch's elastic agent spawning them (`launch`, what torchrun
uses), the run dir's write lock, and `train_or_launch`, which trains here or in the
spawned workers. The workers' environment, process groups and signals are
train/distributed.py; see its docstring for the three ways a command runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, TypeVar

import torch

from timoe_core.config import TrainingConfig
from timoe_core.device import resolve_device
from timoe_core.errors import TimoeError
from timoe_core.lock import output_lock
from timoe_core.train.distributed import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    LaunchEnv,
    TrainingInterrupted,
    WorkersFailed,
    outer_launch,
)
from timoe_core.train.loop import LoopResult
from timoe_core.train.run_dir import RunDirAction

PayloadT = TypeVar("PayloadT")


class WorkerPayload(TypedDict):
    """What a spawned worker is given (plain data: it is pickled across processes)."""

    job: str  # the job's ref, "module:attribute"
    config: dict[str, object]  # the command's config, as config_to_dict writes it
    prepared: bool  # the run dir is prepared already (by the launching process)
    action: RunDirAction  # the run-dir decision the launching process made


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
    def from_config(cls, cfg: TrainingConfig, run_dir: Path | None = None) -> LaunchSpec:
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


def check_launch(cfg: TrainingConfig, world_size: int | None = None) -> int:
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


def launch(entry: Callable[[PayloadT], int], payload: PayloadT, spec: LaunchSpec) -> int:
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

    rdzv_configs: dict[str, int] = {}
    if spec.nnodes == 1 and not spec.rdzv_endpoint:
        # As `torchrun --standalone`: a fresh c10d store on a free local port.
        backend, endpoint = "c10d", "localhost:0"
    elif spec.nnodes == 1:
        backend, endpoint = "c10d", spec.rdzv_endpoint or ""
    else:  # check_launch_spec: several nodes have an endpoint
        backend, endpoint = "static", spec.rdzv_endpoint or ""
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


def run_dir_lock(
    cfg: TrainingConfig, outer: LaunchEnv | None
) -> contextlib.AbstractContextManager[object]:
    """The exclusive write lock of `cfg.out` (timoe_core.lock), held for the whole job by
    the one process that owns the run dir: this launcher on node 0, or rank 0 under an
    outer launcher. A second job on the same --out is exit 2 naming the holder."""
    if cfg.out is None or cfg.node_rank != 0 or (outer is not None and outer.rank != 0):
        return contextlib.nullcontext()
    return output_lock(cfg.out)


def train_or_launch(
    payload: WorkerPayload,
    cfg: TrainingConfig,
    run_dir: Path,
    world_size: int,
    outer: LaunchEnv | None,
    prepare: Callable[[], None],
    train_here: Callable[[WorkerPayload], LoopResult],
    worker: Callable[[WorkerPayload], int],
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


def run_worker(entry: Callable[[PayloadT], int], payload: PayloadT) -> int:
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
