"""What a rerun of train-expert is held to: the recorded fields (run.json) and the
options (config.yaml) a resumed run may not change, each named to the user by its flag."""

from __future__ import annotations

from pathlib import Path

from timoe_core.config import (
    CONFIG_FILENAME,
    TrainExpertConfig,
    flag_name,
    reading_recorded_config,
    resolve_config,
)
from timoe_core.errors import TimoeError
from timoe_core.model.run_info import RunInfo

# How run.json fields that are not options are named to the user when a resume
# conflicts; every other field is an option, named by its flag (config.flag_name).
_RECORD_NAMES = {
    "kind": "--year/--all-years",
    "slice_label": "slice (--year/--all-years)",
    "data_manifest_sha256": "data (--data manifest checksum)",
    "data_files_sha256": "data (the token files of --data it reads)",
    "tokenizer": "tokenizer (--data)",
    "block_size": "--seq-len",
    "vocab_size": "vocab size (--data)",
    "bias": "bias",
    "data_cutoff": "data (the last period with training windows)",
    "snapshots": "--snapshots (or the data's years)",
    "init_from": "--init-from",
}


# Config fields that define what each stage of a staged run trained on: a rerun with any
# other value would go on with another schedule, batch or data order than its finished
# stages and snapshots were made with, and mix the two. A run of --snapshots none is one
# continued run: its budget and lr may change on a rerun (only its seed may not).
_STAGE_FIELDS = ("steps_per_stage", "cutoff_every", "batch_size", "grad_accum", "lr",
                 "min_lr_ratio", "warmup_fraction", "decay_fraction", "decay_shape",
                 "weight_decay", "beta1", "beta2", "grad_clip", "seed", "snapshot_kind",
                 "snapshot_average_fraction", "snapshot_dtype")


def run_conflicts(saved: RunInfo, new: RunInfo, saved_cfg: TrainExpertConfig | None,
                  cfg: TrainExpertConfig) -> list[str]:
    """What the new run (`new`, from `cfg`) changes of the saved one, each named by its
    flag: empty when it may resume."""
    diffs = []
    a = saved.model_dump(exclude={"model_config_", "timoe_version", "start_date", "end_date"})
    b = new.model_dump(exclude={"model_config_", "timoe_version", "start_date", "end_date"})
    a |= saved.model_config_.model_dump()
    b |= new.model_config_.model_dump()
    for key in a:
        if a[key] != b.get(key):
            was, now = a[key], b.get(key)
            if key == "init_from":  # which weights, by name and checksum
                was, now = (f"{v['spec']} sha256 {v['sha256'][:12]}..., optimizer "
                            f"{v['optimizer']}" if v else "none" for v in (was, now))
            diffs.append(
                f"{_RECORD_NAMES.get(key) or flag_name(TrainExpertConfig, key)} "
                f"(run has {was}, flags give {now})"
            )
    if saved_cfg is not None:
        # an option both runs ignore (the average's horizon under decay branches) shaped
        # nothing, and cannot be typed to match
        ignored = saved_cfg.options_without_effect() & cfg.options_without_effect()
        for key in _STAGE_FIELDS if cfg.snapshots == "stages" else ("seed",):
            was, now = getattr(saved_cfg, key), getattr(cfg, key)
            if key not in ignored and was != now:
                diffs.append(f"{flag_name(TrainExpertConfig, key)} (run has {was}, flags give {now})")
    return diffs


def saved_config(run_dir: Path) -> TrainExpertConfig | None:
    """RUN_DIR/config.yaml validated as the config it was written from; None when absent
    (a run killed before writing it)."""
    path = run_dir / CONFIG_FILENAME
    if not path.is_file():
        return None
    try:
        with reading_recorded_config():
            return resolve_config(TrainExpertConfig, path, {})
    except TimoeError as exc:
        raise TimoeError(
            f"{path} is corrupt ({exc}): restore it, or start over with --no-resume --overwrite"
        ) from None

