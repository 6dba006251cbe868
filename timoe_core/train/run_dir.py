"""Run dirs: the one decision every training job makes about its --out (`decide_run_dir`:
new / resume / overwrite, or a one-line refusal, nothing written), opening the run dir
(`open_run_dir`), and what a finished run keeps.

Every job calls `decide_run_dir`: train-expert (marker run.json), a mixture strategy in
one run or staged (marker mixture_run.json; a staged run keeps its checkpoints per stage,
so it has none of its own). A job supplies only its marker and how its recorded settings
differ from the flags (`conflicts`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from timoe_core.config import CONFIG_FILENAME, TrainingConfig
from timoe_core.errors import TimoeError
from timoe_core.io import check_output_path, remove_output
from timoe_core.model.run_info import (
    MODEL_FILENAME,
    RUN_INFO_FILENAME,
    TRAINER_STATE_FILENAME,
    run_progress,
    unfinished_run_line,
)
from timoe_core.train.metrics import METRICS_FILENAME, WANDB_ID_FILENAME
from timoe_core.train.state import (
    CHECKPOINTS_DIRNAME,
    latest_checkpoint,
    load_trainer_state,
    publish_weights,
    remove_stale,
)

RunDirAction = Literal["new", "resume", "overwrite"]
TrainingConfigT = TypeVar("TrainingConfigT", bound=TrainingConfig)


# What this toolkit writes into a run dir: all that --overwrite clears (nothing else).
RUN_ARTIFACTS = (
    RUN_INFO_FILENAME,
    CONFIG_FILENAME,
    MODEL_FILENAME,
    TRAINER_STATE_FILENAME,
    METRICS_FILENAME,
    WANDB_ID_FILENAME,
    CHECKPOINTS_DIRNAME,
    "snapshots",
    "debug",
    "wandb",
)


def decide_run_dir(
    run_dir: Path,
    *,
    resume: bool,
    overwrite: bool,
    restart: bool,
    conflicts: Callable[[], list[str]],
    marker: str = RUN_INFO_FILENAME,
    replaceable: str | None = None,
    checkpointed: bool = True,
) -> RunDirAction:
    """What to do with a command's run dir: "new", "resume" or "overwrite".

    Refuses (TimoeError, nothing written) a non-empty folder that is not a run dir (no
    `marker`), `--no-resume` on an existing run without `--overwrite`, a run whose
    recorded settings `conflicts()` names (one "field (run has X, flags give Y)" per
    difference), trained weights without a checkpoint, and a damaged latest checkpoint.
    `--overwrite` means start over. `restart` (a worker restarted by the elastic agent)
    always resumes.

    replaceable: a file that, without `marker` beside it, is an output this command may
        replace under --overwrite (a bundle no training run wrote).
    checkpointed: False for a run that keeps no checkpoints of its own (a staged run
        keeps them per stage): its recorded settings alone decide a resume.
    """
    run_dir = check_output_path(run_dir, "--out")  # before any worker starts
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    if not (run_dir / marker).is_file():
        if replaceable is not None and (run_dir / replaceable).is_file():
            if overwrite:
                return "overwrite"
            raise TimoeError(
                f"--out {run_dir} holds a {replaceable} that no training run wrote (no "
                f"{marker}): pass --overwrite to replace it, or choose another --out"
            )
        raise TimoeError(
            f"--out {run_dir} is not empty and is not a timoe run dir (no {marker}): "
            "choose a new or empty folder"
        )
    if not (restart or (resume and not overwrite)):
        if not overwrite:
            raise TimoeError(
                f"{run_dir} already holds a run: rerun without --no-resume to resume it, "
                "or add --overwrite to start over"
            )
        return "overwrite"
    ckpt = latest_checkpoint(run_dir) if checkpointed else None
    if ckpt is None and checkpointed:
        progress = run_progress(run_dir)
        if any(run_dir.glob("*.safetensors")) and progress is not None and progress.finished:
            raise TimoeError(
                f"{run_dir} is a finished run (step {progress.step} of {progress.total_steps})"
                " whose trainer checkpoints were removed (`timoe demo` removes them): "
                "nothing to train; use it as it is, or start over with --no-resume --overwrite"
            )
        if any(run_dir.glob("*.safetensors")):
            raise TimoeError(
                f"{run_dir} has trained weights but no checkpoint to resume from: "
                "start over with --no-resume --overwrite, or choose another --out"
            )
        return "resume"  # killed before its first checkpoint: it starts again
    diffs = conflicts()
    if diffs:
        raise TimoeError(
            f"cannot resume {run_dir}: the flags change "
            + "; ".join(diffs)
            + ". Use the run's settings, another --out, or --no-resume --overwrite to start over"
        )
    if ckpt is not None:
        load_trainer_state(ckpt)  # a damaged checkpoint: TimoeError naming the file
    return "resume"


def config_to_save(cfg: TrainingConfigT) -> TrainingConfigT:
    """The config as written to RUN_DIR/config.yaml: rerunning it with --config resumes
    the run and never clobbers it."""
    return cfg.model_copy(update={"resume": True, "overwrite": False, "stop_at_step": None})


def open_run_dir(run_dir: Path, action: RunDirAction) -> None:
    """Create the run dir (clearing this toolkit's files first on "overwrite") and remove
    checkpoints a killed run left half-written."""
    run_dir = Path(run_dir)
    if action == "overwrite":
        for name in RUN_ARTIFACTS:
            remove_output(run_dir / name)  # a link: only the link goes
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(run_dir)
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        # A kill between a checkpoint's rename and its publication left the run dir's
        # weights one checkpoint behind; a run that has nothing left to train would
        # otherwise never correct them.
        publish_weights(latest, run_dir)


def interrupted_message(run_dir: Path) -> str:
    """What to tell a user whose run stopped on Ctrl-C/SIGTERM: where it can resume from."""
    ckpt = latest_checkpoint(run_dir)
    where = f"checkpoint at step {ckpt.step} in {ckpt.path}" if ckpt else "no checkpoint yet"
    return f"interrupted ({where}): rerun the same command to resume"


def check_finished_runs(paths: list[Path]) -> None:
    """Refuse (TimoeError, before any work) a run dir among `paths` (run dirs or folders
    of them) whose training has not reached its last step: its weights and snapshots are
    not the ones its run.json promises yet."""
    for p in map(Path, paths):
        dirs = [p] if (p / RUN_INFO_FILENAME).is_file() else (
            sorted(d for d in p.iterdir() if (d / RUN_INFO_FILENAME).is_file())
            if p.is_dir() else [])
        for d in dirs:
            progress = run_progress(d)
            if progress is not None and not progress.finished:
                raise TimoeError(unfinished_run_line(d, progress) + "; or leave it out of "
                                 "--experts")


def remove_training_state(run_dir: Path, keep: tuple[str, ...] = ()) -> None:
    """Delete what only resuming `run_dir` needs, once it is finished and will never be
    resumed: its checkpoints (trainer state, optimizer moments and their weight files)
    and every other entry but the names in `keep`. A file hard-linked elsewhere (the
    published weights) stays wherever else it is linked."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for p in sorted(run_dir.iterdir()):
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
