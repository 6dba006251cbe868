"""run.json: what a model is (kind, time slice, model config, tokenizer, data cutoff,
snapshots), readable without loading its weights.

A run dir holds:
    model.safetensors   weights only (model/weights.py): loading it can never execute code
                        (a hard link to the latest checkpoint's weights while training)
    run.json            what the model is: kind, time slice, model config, tokenizer,
                        the token files it read (sha256 each)
    checkpoints/step-NNNNNNNN/{model.safetensors,trainer_state.pt}
                        complete training checkpoints; trainer_state.pt holds the
                        optimizer/schedule/step/data position/RNG, read with
                        torch.load(weights_only=True) (timoe_core.train.state)
    snapshots/<date>/   model.safetensors + snapshot.json of each stage but the last
                        (train-expert --snapshots stages): the expert as of that date
    config.yaml         the resolved command config (rerun with --config)
    metrics.jsonl       one JSON object per logged step
Every file is written atomically (timoe_core.io).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from timoe_core import __version__
from timoe_core.config import CONFIG_FILENAME
from timoe_core.data.manifest import data_read_as_of
from timoe_core.errors import TimoeError, describe_validation_error
from timoe_core.io import atomic_write_json, read_metadata, read_small_file
from timoe_core.model.gpt import GPTConfig
from timoe_core.timeslices import TimeSlice

MODEL_FILENAME = "model.safetensors"
RUN_INFO_FILENAME = "run.json"
TRAINER_STATE_FILENAME = "trainer_state.pt"
METRICS_FILENAME = "metrics.jsonl"  # written by train/metrics.py; read here, below train


InitKind = Literal["run", "snapshot", "bundle-expert", "gptbase", "hf"]


class InitRecord(BaseModel):
    """What a run's weights started from (`train-expert --init-from`): the chain of an
    artefact, recorded in its run.json. Its text shaped the run, so the run's data_cutoff
    is at least this record's."""

    model_config = ConfigDict(extra="forbid")

    spec: str  # as given: a path, BUNDLE:expert:YEAR, hf:ORG/NAME, or "previous"
    kind: InitKind
    path: str  # the folder its weights were read from, relative to the run dir
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # of the weights file read
    data_cutoff: str  # its latest text (stated by --init-cutoff for a foreign folder)
    optimizer: bool = False  # its AdamW state was taken too (--init-optimizer)
    init_from: InitRecord | None = None  # its own chain, if it had one

    @field_validator("data_cutoff")
    @classmethod
    def _cutoff(cls, value: str) -> str:
        return _iso_date(value)

    @property
    def cutoff(self) -> date:
        return date.fromisoformat(self.data_cutoff)


# What a run dir holds: a slice's expert, a dense model on every slice, or a base model.
RunKind = Literal["expert", "dense", "base"]


class RunInfo(BaseModel):
    """run.json: enough to know what a model is without loading its weights."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # expert: a time slice's; dense: every slice (--all-years); base: every year up to a
    # date (--base --until), the common --init-from of the experts.
    kind: RunKind
    slice_label: str  # "2015-2016"; for dense runs the whole range, "2013-2024"
    start_date: str  # ISO date of the slice's first day
    end_date: str  # ISO date of the slice's last day
    model_config_: GPTConfig
    tokenizer: dict[str, object]
    # Written by timoe before 0.x: the whole manifest's sha256 (later years included).
    # Read, never written: an artefact records only what it read (data_files_sha256).
    data_manifest_sha256: str | None = None
    # {"train/2015.bin": sha256, "train/2016.bin@2016-07-31": sha256, ...}: the token files
    # of the years this artefact read, and of a year it read part of, that part (the
    # documents dated up to the day after "@"; data.manifest.data_read_up_to).
    data_files_sha256: dict[str, str] = {}
    # ISO date of the latest text that shaped the final weights (train-expert records it;
    # imported models state it); None in runs written before cutoffs: the slice's end.
    data_cutoff: str | None = None
    # Snapshots inside the slice (train-expert --snapshots stages), earliest first:
    # {"data_cutoff": ISO date, "path": "snapshots/<date>"}; each folder holds its
    # model.safetensors and snapshot.json (cutoff, stage end, steps, sha256).
    snapshots: list[dict[str, str]] = []
    timoe_version: str = __version__
    imported_from: str | None = None  # `timoe import`: the source format and folder
    init_from: InitRecord | None = None  # `train-expert --init-from`: what it started from

    @field_validator("snapshots")
    @classmethod
    def _snapshot_entries(cls, entries: list[dict[str, str]]) -> list[dict[str, str]]:
        """Each entry {"data_cutoff": ISO date, "path": "snapshots/<its stage's date>"}: a
        path anywhere else (an absolute one, `..`) would read weights from outside the run.
        The stage's date is the cutoff, or earlier when the run started from weights with a
        later cutoff (--init-from), whose cutoff the snapshot then takes."""
        for i, entry in enumerate(entries):
            if set(entry) != {"data_cutoff", "path"}:
                raise ValueError(f"entry {i} must hold data_cutoff and path, holds "
                                 f"{sorted(entry)}")
            _iso_date(entry["data_cutoff"])
            folder, _, stage = entry["path"].partition("/")
            try:
                stage_date = date.fromisoformat(stage)
            except ValueError:
                stage_date = None
            if (folder != SNAPSHOTS_DIRNAME or stage_date is None or stage != stage_date.isoformat()
                    or stage_date > date.fromisoformat(entry["data_cutoff"])):
                raise ValueError(f"entry {i}: path {entry['path']!r} is not "
                                 f"{SNAPSHOTS_DIRNAME}/<a date on or before its data_cutoff>")
        return entries

    @property
    def time_slice(self) -> TimeSlice:
        return TimeSlice.from_label(self.slice_label)

    @property
    def cutoff(self) -> date:
        """data_cutoff as a date (the slice's end for runs that did not record it)."""
        return date.fromisoformat(self.data_cutoff or self.end_date)

    def at_cutoff(self, cutoff: date, data_files: dict[str, str] | None = None) -> RunInfo:
        """The run.json of an artefact of this run with an earlier (or the same) cutoff (a
        snapshot, an expert stored in a bundle): what it read (`data_files`, else this
        record's entries up to the cutoff), and nothing later. Its cutoff is never before
        that of the weights the run started from."""
        files = data_read_as_of(self.data_files_sha256, cutoff) if data_files is None \
            else data_files
        if self.init_from is not None:
            cutoff = max(cutoff, self.init_from.cutoff)
        return self.model_copy(update={
            "data_cutoff": cutoff.isoformat(), "snapshots": [], "data_manifest_sha256": None,
            "data_files_sha256": files,
        })


SNAPSHOTS_DIRNAME = "snapshots"
SNAPSHOT_INFO_FILENAME = "snapshot.json"


def _iso_date(value: str) -> str:
    date.fromisoformat(value)  # ValueError names what is wrong
    return value


class SnapshotInfo(BaseModel):
    """snapshot.json, written last into a snapshot folder: the folder is whole when it is
    there, and its sha256 is what the weights must hash to."""

    model_config = ConfigDict(extra="forbid")

    data_cutoff: str
    stage_end: str  # ISO date: the last day of the stage's period (= data_cutoff)
    stage_steps: int = Field(ge=0)
    decay_steps: int = Field(ge=0)  # of the decay branch; 0 for an averaged snapshot
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # How the snapshot was made (--snapshot-kind; files written before kinds: decay) and
    # stored (--snapshot-dtype); average_fraction: the average's horizon (kind average).
    kind: Literal["average", "decay"] = "decay"
    average_fraction: float | None = Field(None, gt=0.0, le=1.0)
    dtype: Literal["float32", "bfloat16"] = "float32"

    @model_validator(mode="before")
    @classmethod
    def _yearly(cls, data: Any) -> Any:
        """snapshot.json written before cutoffs by period named its stage by year."""
        if isinstance(data, dict) and "stage_year" in data and "stage_end" not in data:
            data = dict(data)
            year = data.pop("stage_year")
            data["stage_end"] = f"{year}-12-31" if isinstance(year, int) else year
        return data

    @field_validator("data_cutoff", "stage_end")
    @classmethod
    def _cutoff(cls, value: str) -> str:
        return _iso_date(value)


def read_snapshot_info(folder: Path) -> SnapshotInfo:
    """A snapshot folder's snapshot.json, validated; TimoeError naming it when it is
    missing (the snapshot was never finished) or of the wrong shape."""
    path = Path(folder) / SNAPSHOT_INFO_FILENAME
    if not path.is_file():
        raise TimoeError(
            f"{path} is missing: the snapshot {folder} was never finished or was removed; "
            f"rerun the same train-expert command on {Path(folder).parent.parent} to rebuild "
            "it, or restore it"
        )
    return read_metadata(path, SnapshotInfo, "restore the snapshot, or retrain the run")


def _info_to_json(info: RunInfo) -> dict:
    data = json.loads(info.model_dump_json())
    data["model_config"] = data.pop("model_config_")
    return data


def read_run_info(run_dir: Path) -> RunInfo:
    path = Path(run_dir) / RUN_INFO_FILENAME
    if not path.is_file():
        raise TimoeError(
            f"{run_dir} is not a run dir (no {RUN_INFO_FILENAME}): train it with "
            "`timoe train-expert` first"
        )
    try:
        data = json.loads(read_small_file(path).decode("utf-8"))
        data["model_config_"] = data.pop("model_config")
        return RunInfo.model_validate(data)
    except (ValueError, KeyError, TypeError, AttributeError,
            ValidationError) as exc:  # ValueError: JSON, UTF-8, a 5000-digit number
        why = describe_validation_error(exc)
        if isinstance(exc, (KeyError, TypeError, AttributeError)):
            why = "it holds no model_config mapping"
        raise TimoeError(f"{path} is corrupt ({why}): retrain or restore it") from None


def write_run_info(run_dir: Path, info: RunInfo) -> None:
    atomic_write_json(Path(run_dir) / RUN_INFO_FILENAME, _info_to_json(info))


# ----------------------------------------------------------- metrics.jsonl


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILENAME
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if isinstance(record, dict):  # a line of another shape is not one of ours
            out.append(record)
    return out


@dataclass(frozen=True)
class RunProgress:
    """How far a training run got: its last logged step of the steps it plans."""

    step: int
    total_steps: int

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


def run_progress(run_dir: Path) -> RunProgress | None:
    """From RUN_DIR/metrics.jsonl: the last train step against the total of the last
    invocation's runtime record; None when no record says (no metrics, an older run)."""
    records = read_metrics(run_dir)
    totals = [r["total_steps"] for r in records
              if r.get("type") == "runtime" and isinstance(r.get("total_steps"), int)]
    if not totals:
        return None
    steps = [int(r.get("step", 0)) for r in records if r.get("type") == "train"]
    return RunProgress(max(steps, default=0), totals[-1])


def unfinished_run_line(run_dir: Path, progress: RunProgress) -> str:
    """What to tell a user about an unfinished run: where it stopped, how to finish it."""
    return (f"{run_dir} is an unfinished run (step {progress.step} of "
            f"{progress.total_steps}): finish it by rerunning the command that trained it, "
            f"e.g. `timoe train-expert --config {Path(run_dir) / CONFIG_FILENAME}`")
