"""avg: equal weights over the eligible experts; nothing to train.

Its recipe writes the bundle at once: the experts' run dirs and checksums, no router.
"""

from __future__ import annotations

from pathlib import Path

from timoe_core.config import TrainRouterConfig, save_config
from timoe_core.errors import TimoeError
from timoe_core.io import check_output_path
from timoe_core.lock import output_lock
from timoe_core.model.bundle import BUNDLE_FILENAME
from timoe_core.model.mixture import TiMoE
from timoe_core.model.weighting import AVG
from timoe_core.train.mixture_record import (
    MIXTURE_RUN_FILENAME,
    clear_bundle_artifacts,
    mixture_options,
)
from timoe_core.train.recipe import BundleRecipe
from timoe_core.train.run_dir import open_run_dir


def _check_avg_out(out: Path | None, overwrite: bool) -> Path:
    """--out must be new, empty, or a bundle we may replace; never a run dir or a file."""
    if out is None:
        raise TimoeError("--out is required: the folder to write the bundle to")
    if out.exists() and not out.is_dir():
        raise TimoeError(f"--out {out} is a file: give a folder for the bundle")
    check_output_path(out, "--out")
    if (out / "run.json").is_file():
        raise TimoeError(f"--out {out} is a run dir: write the bundle to a folder of its own")
    ours = (out / BUNDLE_FILENAME).is_file() or (out / MIXTURE_RUN_FILENAME).is_file()
    if ours and not overwrite:
        raise TimoeError(f"--out {out} already holds a bundle: pass --overwrite to replace it")
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise TimoeError(f"--out {out} is not empty and holds no bundle: choose a new folder")
    return out


def write_avg_bundle(cfg: TrainRouterConfig) -> Path:
    """The avg bundle: the experts' run dirs and checksums, no router."""
    if not cfg.experts:
        raise TimoeError("--experts is required: a folder of expert run dirs (or run dirs)")
    out = _check_avg_out(cfg.out, cfg.overwrite)
    with output_lock(out):
        mix = TiMoE.from_expert_dirs(cfg.experts, strategy="avg", options=mixture_options(cfg))
        if cfg.overwrite:
            clear_bundle_artifacts(out)
            open_run_dir(out, "overwrite")  # a learned-avg run's checkpoints too
        mix.save_bundle(out)
        save_config(cfg, out)
    return out


RECIPE = BundleRecipe(AVG, write_avg_bundle)
