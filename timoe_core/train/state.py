"""Training checkpoints: weights + trainer state, written so a kill never leaves a bad pair.

Layout of a run dir while and after training:

    RUN_DIR/
      run.json, config.yaml       what the run is (written once, before training)
      metrics.jsonl               one JSON object per log/eval step (rank 0)
      model.safetensors           the latest checkpoint's weights (a hard link into it)
      checkpoints/
        step-00000040/            one complete checkpoint
          model.safetensors       the weights (safetensors: loading runs no code)
          trainer_state.pt        optimizer, schedule, step, tokens, data position,
                                  RNG states of every rank, sha256 of the weight files
        .tmp-step-00000060-*/     a checkpoint being written (ignored, removed on start)

Consistency: a checkpoint is written whole into a temp folder beside the others (every
file fsynced), and only then renamed to `step-NNNNNNNN` in one `rename` (atomic on
POSIX), then the folder is fsynced. A kill at any point leaves either no new
checkpoint (the temp folder is ignored and removed on the next start) or a complete
one; resume always takes the highest complete step. The trainer state also records the
sha256 of each weight file beside it, so a checkpoint whose files were changed or
damaged afterwards is refused naming the file, never silently used or replaced.
Older checkpoints beyond `keep` are removed only after the new one is in place.

The trainer state holds plain Python values and tensors only (RNG states included), so
it is read with `torch.load(weights_only=True)`: a crafted pickle cannot run code.

What a command does with its run dir before training (new / resume / overwrite) is
train/run_dir.py.

Fault-injection hooks, for the reliability tests only (inert unless the variable is set):
    TIMOE_TEST_KILL_CHECKPOINT=STEP:WHERE   SIGKILL this process group while writing
        checkpoint STEP, WHERE = before-rename (temp folder complete, not yet renamed)
        or after-rename (checkpoint in place, run dir weights not yet published).
    TIMOE_TEST_FAIL_RANK=RANK:STEP:MARKER   rank RANK SIGKILLs itself after optimizer
        step STEP, once: it creates the file MARKER first and never fires when it exists
        (a worker dying under --max-restarts).
A kill between two steps needs no hook: the tests signal the process group.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import signal
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, TypeVar, cast

import torch

from timoe_core import __version__
from timoe_core.config import CONFIG_FILENAME, TrainingConfig
from timoe_core.data.manifest import sha256_file
from timoe_core.errors import TimoeError
from timoe_core.io import (
    _fsync_dir,
    atomic_path,
    safe_loader_refusal,
    write_failure_as_os_error,
)
from timoe_core.model.run_info import (
    MODEL_FILENAME,
    RUN_INFO_FILENAME,
    TRAINER_STATE_FILENAME,
)
from timoe_core.train.metrics import METRICS_FILENAME, WANDB_ID_FILENAME
from timoe_core.train.rng import RngState
from timoe_core.train.schedule import ScheduleState
from timoe_core.train.task import TaskState


class _TaskStateField(TypedDict, total=False):
    task_state: TaskState  # only when the task has a state of its own


class TrainerState(_TaskStateField):
    """What the loop saves besides the weights (trainer_state.pt), from each component's
    own state."""

    task: str
    tokens: int
    elapsed: float
    data: dict[str, int]  # DataPosition.to_dict
    optimizer: dict[str, object]  # optimizer.state_dict()
    schedule: ScheduleState
    rng: list[RngState]  # every rank's, in rank order
    world_size: int


class SavedTrainerState(TrainerState):
    """A trainer state as a checkpoint holds it: what `write_checkpoint` adds."""

    format: int
    step: int
    timoe_version: str
    files: dict[str, str]  # weight file (relative path) -> sha256


CHECKPOINTS_DIRNAME = "checkpoints"
STATE_FORMAT = 1
_STEP_RE = re.compile(r"step-(\d{8,})")
TrainingConfigT = TypeVar("TrainingConfigT", bound=TrainingConfig)
_REQUIRED_KEYS = {
    "format": int,
    "step": int,
    "tokens": int,
    "elapsed": float,
    "data": dict,
    "optimizer": dict,
    "schedule": dict,
    "rng": list,
    "world_size": int,
    "files": dict,
}


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    @property
    def state_path(self) -> Path:
        return self.path / TRAINER_STATE_FILENAME


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIRNAME


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.fullmatch(p.name)
        if m and p.is_dir():
            found.append(Checkpoint(p, int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


# What io.atomic_path leaves when a write is killed: `.NAME.XXXXXXXX.tmp` (mkstemp).
_TEMP_DEBRIS = re.compile(r"\.(.+)\.[A-Za-z0-9_]{8}\.tmp")


def remove_stale(run_dir: Path) -> None:
    """Remove what a killed run left half-written: checkpoint folders, and the temp files
    of atomic writes (of run artefacts only) in the run dir and its snapshot folders.
    Called under the run dir's write lock, so no live writer owns them."""
    root = checkpoints_dir(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)
    folders = [run_dir, *sorted(p for p in (run_dir / "snapshots").glob("*")
                                if p.is_dir() and not p.is_symlink())]
    for folder in folders:
        for p in folder.glob(".*.tmp"):
            m = _TEMP_DEBRIS.fullmatch(p.name)
            if m and m.group(1) in _RUN_FILES and (p.is_file() or p.is_symlink()):
                p.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_checkpoint(
    run_dir: Path,
    step: int,
    save_weights: Callable[[Path], None],
    trainer_state: TrainerState,
    keep: int = 2,
) -> Checkpoint:
    """Write checkpoint `step` atomically, publish its weights, prune old ones.

    `save_weights(directory)` writes the weight files (safetensors) into `directory`,
    sub-folders allowed (e.g. one per expert); each is checksummed into the trainer
    state and linked into the run dir at the same relative path.
    """
    root = checkpoints_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise _write_failed(run_dir, step, exc) from None
    try:
        try:
            save_weights(tmp)
            weights = _weight_files(tmp)
            state: SavedTrainerState = {
                **trainer_state,
                "files": {rel: sha256_file(tmp / rel) for rel in weights},
                "format": STATE_FORMAT,
                "step": step,
                "timoe_version": __version__,
            }
            torch.save(state, tmp / TRAINER_STATE_FILENAME)
        except Exception as exc:  # torch/safetensors wrap a full disk in their own errors
            os_error = write_failure_as_os_error(exc, tmp)
            if os_error is None:
                raise
            raise os_error from None
        for rel in [*weights, TRAINER_STATE_FILENAME]:
            _fsync_file(tmp / rel)
        for d in sorted({(tmp / rel).parent for rel in weights}, reverse=True):
            _fsync_dir(d)
        _test_kill_point(step, "before-rename")
        if final.exists():  # the same step again (e.g. rerun after a kill): replace it
            old = root / f".old-step-{step:08d}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as exc:  # disk full, quota, read-only: the previous checkpoint stays
        raise _write_failed(run_dir, step, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _test_kill_point(step, "after-rename")
    ckpt = Checkpoint(final, step)
    publish_weights(ckpt, run_dir)
    for old_ckpt in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old_ckpt.path, ignore_errors=True)
    return ckpt


def _write_failed(run_dir: Path, step: int, exc: OSError) -> TimoeError:
    """A checkpoint that could not be written, as one line saying what is still safe."""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free disk space"
    else:
        fix = "make the run dir writable"
    prev = latest_checkpoint(run_dir)
    kept = f"the checkpoint at step {prev.step} is intact" if prev else "no checkpoint was kept"
    return TimoeError(
        f"cannot write the checkpoint of step {step} in {checkpoints_dir(run_dir)} ({why}): "
        f"{kept}; {fix}, then rerun the same command to resume"
    )


def _test_kill_point(step: int, where: str) -> None:
    """TIMOE_TEST_KILL_CHECKPOINT (module docstring): die here, as a kill -9 of the job would."""
    if os.environ.get("TIMOE_TEST_KILL_CHECKPOINT") == f"{step}:{where}":
        os.killpg(os.getpgrp(), signal.SIGKILL)


def fault_point(rank: int, step: int) -> None:
    """TIMOE_TEST_FAIL_RANK (module docstring): called by the loop after every step."""
    spec = os.environ.get("TIMOE_TEST_FAIL_RANK")
    if not spec:
        return
    want_rank, want_step, marker = spec.split(":", 2)
    if (int(want_rank), int(want_step)) == (rank, step) and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


def _weight_files(directory: Path) -> list[str]:
    """Relative paths (POSIX) of every file `save_weights` wrote, sub-folders included."""
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != TRAINER_STATE_FILENAME
    )


def publish_weights(ckpt: Checkpoint, run_dir: Path) -> None:
    """Make the checkpoint's weight files the run dir's, at the same relative paths
    (hard links, each replaced atomically)."""
    for rel in _weight_files(ckpt.path):
        src, dst = ckpt.path / rel, Path(run_dir) / rel
        with atomic_path(dst) as tmp:
            tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:  # a file system without hard links
                shutil.copyfile(src, tmp)


def _corrupt(path: Path, why: str) -> TimoeError:
    return TimoeError(
        f"checkpoint file {path} is corrupt ({why}): delete {path.parent} to resume from "
        "the checkpoint before it, or start over with --no-resume --overwrite"
    )


def load_trainer_state(ckpt: Checkpoint, verify_files: bool = True) -> SavedTrainerState:
    """The trainer state of `ckpt`, checked; TimoeError naming the file when it is bad."""
    path = ckpt.state_path
    if not path.is_file():
        raise _corrupt(path, "missing")
    try:
        with warnings.catch_warnings():  # a foreign file's pickle protocol: refused below anyway
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _corrupt(
            path,
            f"refused by the safe loader: {safe_loader_refusal(exc)}; never load it with "
            "weights_only=False, it may run code",
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise _corrupt(path, f"not a readable trainer state: {first}") from None
    if not isinstance(state, dict):
        raise _corrupt(path, "not a trainer state mapping")
    for key, kind in _REQUIRED_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise _corrupt(path, f"field {key!r} is missing or not of type {kind.__name__}")
    if state["format"] != STATE_FORMAT:
        raise _corrupt(path, f"format {state['format']}, this timoe reads {STATE_FORMAT}")
    if state["step"] != ckpt.step:
        raise _corrupt(path, f"it holds step {state['step']} but sits in {ckpt.path.name}")
    if verify_files:
        for name, digest in state["files"].items():
            f = ckpt.path / name
            if not f.is_file():
                raise _corrupt(f, "missing")
            if sha256_file(f) != digest:
                raise _corrupt(f, "its sha256 differs from the one in trainer_state.pt")
    # A pickle's contents are known only at run time: the fields checked above are what
    # the type says.
    return cast(SavedTrainerState, state)


# Files of a run dir (or a snapshot folder) written atomically: their temp files are debris.
_RUN_FILES = {RUN_INFO_FILENAME, CONFIG_FILENAME, MODEL_FILENAME, METRICS_FILENAME,
              WANDB_ID_FILENAME, "snapshot.json", "timoe.json", "mixture_run.json",
              "router.safetensors"}
