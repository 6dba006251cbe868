"""The demo's --out folder: its resume state (demo.json), what the demo wrote there, and
the refusals that keep it from writing over anything else."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from timoe_core.config import CONFIG_FILENAME, DemoConfig
from timoe_core.demo.settings import (
    PERPLEXITY_PLOT_FILENAME,
    QA_PLOT_FILENAME,
    REPORT_FILENAME,
    STATE_FILENAME,
    DemoSettings,
)
from timoe_core.errors import TimoeError
from timoe_core.io import check_output_path
from timoe_core.lock import lock_path


def _read_state(path: Path) -> dict[str, Any] | None:
    """demo.json, or None when it is not a demo state ({"settings": {...}, "finished":
    {stage: {"seconds": N}}}): a folder holding another file of that name is no demo."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(state, dict) and isinstance(state.get("settings"), dict)
          and isinstance(state.get("finished"), dict)
          and all(isinstance(v, dict) and isinstance(v.get("seconds"), (int, float))
                  for v in state["finished"].values()))
    return state if ok else None


def _is_demo_output(p: Path) -> bool:
    """An entry of --out that the demo writes (all --overwrite may delete)."""
    fixed = {"data", "experts", "dense", STATE_FILENAME, REPORT_FILENAME, QA_PLOT_FILENAME,
             PERPLEXITY_PLOT_FILENAME, CONFIG_FILENAME}
    if p.name in fixed or re.fullmatch(r"timoe-[a-z-]+", p.name):
        return True
    # locks, staging and temp files of the commands the demo runs
    return p.name.startswith(".") and (
        p.name.endswith((".lock", ".tmp")) or ".partial-" in p.name or ".old-" in p.name
    )


def _remove_demo_outputs(out: Path) -> None:
    """Delete what an earlier demo wrote in `out`, refusing (before deleting anything)
    when `out` holds anything else: --overwrite never deletes a user's file."""
    foreign = [p for p in sorted(out.iterdir()) if not _is_demo_output(p)]
    if foreign:
        raise TimoeError(
            f"--out {out} holds {foreign[0]}, which the demo did not write: refusing to "
            "start the demo over there even with --overwrite; move it out or give another --out"
        )
    for p in sorted(out.iterdir()):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p != lock_path(out):
            p.unlink()


def check_out(cfg: DemoConfig, settings: DemoSettings) -> dict[str, Any]:
    """The demo state to continue from; refuses to write into a folder that is not a demo
    of the same settings (it never deletes anything but an earlier demo's folder)."""
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise TimoeError(f"--out {out} is a file: give a folder for the demo")
    check_output_path(out, "--out")
    state_path = out / STATE_FILENAME
    state = _read_state(state_path) if state_path.is_file() else None
    if out.is_dir() and any(out.iterdir()) and state is None:
        raise TimoeError(f"--out {out} is not empty and holds no demo: give a new folder")
    if state is not None and state.get("settings") != settings.model_dump():
        if not cfg.overwrite:
            diff = sorted(k for k, v in settings.model_dump().items()
                          if (state.get("settings") or {}).get(k) != v)
            raise TimoeError(f"--out {out} holds a demo with other settings ({', '.join(diff)}):"
                             " pass --overwrite to start it over, or give another --out")
        _remove_demo_outputs(out)
        state = None
    if state is None:
        state = {"settings": settings.model_dump(), "finished": {}}
    return state
