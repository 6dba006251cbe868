"""`timoe import`: checkpoints from elsewhere as timoe run dirs.

Formats: `gptbase` (the TiMoE paper code's experts) and `hf` (a transformers
GPT2LMHeadModel folder), read and checked by `model.foreign`. The run
dir gets run.json (the slice, the data cutoff the user states or the slice's last day,
the source), model.safetensors and config.yaml; it is written only after every check
passed, through a staging folder renamed onto `--out`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from timoe_core.config import ImportConfig, save_config
from timoe_core.errors import TimoeError
from timoe_core.io import check_output_path, chmod_default
from timoe_core.lock import output_lock
from timoe_core.model.foreign import read_foreign_model
from timoe_core.model.hub import resolve_model_path
from timoe_core.model.run_info import RunInfo, write_run_info
from timoe_core.model.weights import save_model_weights
from timoe_core.timeslices import TimeSlice, parse_query_date
from timoe_core.tokenizer import get_tokenizer


def _slice_and_cutoff(cfg: ImportConfig) -> tuple[TimeSlice, str]:
    if cfg.slice is None:
        raise TimoeError("--slice is required: the years the model was trained on, e.g. "
                         "--slice 2015-2016")
    ts = TimeSlice.from_label(cfg.slice)
    if cfg.data_cutoff is None:
        return ts, ts.end.isoformat()
    cutoff = parse_query_date(cfg.data_cutoff)
    if cutoff < ts.start:
        raise TimoeError(f"--data-cutoff {cfg.data_cutoff} is before the slice {ts.label} "
                         "starts: the model saw text of its slice")
    return ts, cutoff.isoformat()


def import_model(cfg: ImportConfig) -> Path:
    """Read `cfg.source` as `cfg.format` and write a timoe run dir at `cfg.out`."""
    if cfg.out is None:
        return _import_model(cfg)  # the error naming what is missing
    with output_lock(check_output_path(cfg.out, "--out")):  # one writer per output
        return _import_model(cfg)


def _import_model(cfg: ImportConfig) -> Path:
    if cfg.format is None:
        raise TimoeError("--format is required: gptbase (the paper's experts) or hf")
    if cfg.source is None:
        raise TimoeError("--source is required: the folder to import, or hf:ORG/NAME")
    if cfg.out is None:
        raise TimoeError("--out is required: the run dir to write")
    out = check_output_path(cfg.out, "--out")  # a link to a folder: that folder
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TimoeError(f"--out {out} exists and is not an empty folder: choose a new one")
    ts, cutoff = _slice_and_cutoff(cfg)
    folder = resolve_model_path(cfg.source)
    if not folder.is_dir():
        raise TimoeError(f"--source {cfg.source} is not a folder")
    model = read_foreign_model(cfg.format, folder)
    tok = get_tokenizer()
    info = RunInfo(
        kind=cfg.kind, slice_label=ts.label, start_date=ts.start.isoformat(),
        end_date=ts.end.isoformat(), model_config_=model.config, tokenizer=tok.describe(),
        data_cutoff=cutoff, imported_from=f"{cfg.format}:{cfg.source}",
    )
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.absolute().parent))
    chmod_default(staging, 0o777)
    try:
        save_model_weights(staging, model)
        save_config(cfg, staging)
        write_run_info(staging, info)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out
