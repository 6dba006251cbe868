"""run.json: what a model is (kind, time slice, model config, tokenizer, data cutoff,
snapshots), readable without loading its weights.

A run dir holds:
    model.safetensors   weights only (model/weights.py): loading it can never execute code
                        (a hard link to the latest checkpoint's weights while training)
    run.json            what the model is: kind, time slice, model config, tokenizer,
                        data manifest checksum
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
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from timoe_core import __version__
from timoe_core.errors import TimoeError, describe_validation_error
from timoe_core.io import atomic_write_json, read_small_file
from timoe_core.model.gpt import GPTConfig
from timoe_core.timeslices import TimeSlice

MODEL_FILENAME = "model.safetensors"
RUN_INFO_FILENAME = "run.json"
TRAINER_STATE_FILENAME = "trainer_state.pt"


class RunInfo(BaseModel):
    """run.json: enough to know what a model is without loading its weights."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: Literal["expert", "dense"]
    slice_label: str  # "2015-2016"; for dense runs the whole range, "2013-2024"
    start_date: str  # ISO date of the slice's first day
    end_date: str  # ISO date of the slice's last day
    model_config_: GPTConfig
    tokenizer: dict[str, object]
    data_manifest_sha256: str | None = None
    # ISO date of the latest text that shaped the final weights (train-expert records it;
    # imported models state it); None in runs written before cutoffs: the slice's end.
    data_cutoff: str | None = None
    # Snapshots inside the slice (train-expert --snapshots stages), earliest first:
    # {"data_cutoff": ISO date, "path": "snapshots/<date>"}; each folder holds its
    # model.safetensors and snapshot.json (cutoff, stage year, steps, sha256).
    snapshots: list[dict[str, str]] = []
    timoe_version: str = __version__
    imported_from: str | None = None  # `timoe import`: the source format and folder

    @property
    def time_slice(self) -> TimeSlice:
        return TimeSlice.from_label(self.slice_label)

    @property
    def cutoff(self) -> date:
        """data_cutoff as a date (the slice's end for runs that did not record it)."""
        return date.fromisoformat(self.data_cutoff or self.end_date)


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
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValidationError,
            UnicodeDecodeError) as exc:  # fmt: skip
        why = describe_validation_error(exc)
        if isinstance(exc, (KeyError, TypeError, AttributeError)):
            why = "it holds no model_config mapping"
        raise TimoeError(f"{path} is corrupt ({why}): retrain or restore it") from None


def write_run_info(run_dir: Path, info: RunInfo) -> None:
    atomic_write_json(Path(run_dir) / RUN_INFO_FILENAME, _info_to_json(info))
