"""What a mixture run is and records, and how a rerun is held to it: its config (and the
`mixture_options` of it), mixture_run.json (what the run is: strategy, experts and their
checksums, data, settings), the comparison that names every setting the flags change,
the run-dir decision of both mixture jobs (in one stage, or staged), and the bundle
files --overwrite clears from --out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from timoe_core.config import CoadaptConfig, MixtureOptions, TrainRouterConfig, flag_name
from timoe_core.errors import TimoeError
from timoe_core.io import JSONObject, read_json_object, remove_output
from timoe_core.model.bundle import BUNDLE_FILENAME, EMBEDDED_EXPERTS_DIR, ROUTER_FILENAME
from timoe_core.train.logprob_cache import CACHE_DIRNAME
from timoe_core.train.run_dir import RunDirAction, decide_run_dir

MixtureConfig = TrainRouterConfig | CoadaptConfig


def mixture_options(cfg: MixtureConfig) -> MixtureOptions:
    """The MixtureOptions part of a command config."""
    return MixtureOptions(**{name: getattr(cfg, name) for name in MixtureOptions.model_fields})


MIXTURE_RUN_FILENAME = "mixture_run.json"
# What --overwrite clears besides the run artifacts every training command writes.
BUNDLE_ARTIFACTS = (
    BUNDLE_FILENAME,
    ROUTER_FILENAME,
    EMBEDDED_EXPERTS_DIR,
    MIXTURE_RUN_FILENAME,
    CACHE_DIRNAME,
)

# How mixture_run.json fields that are not options are named to the user when a resume
# conflicts; every other field is an option, named by its flag (config.flag_name).
_RECORD_NAMES = {
    "experts": "--experts (expert weights sha256)",
    "data_files_sha256": "data (the token files of --data it reads)",
    "years": "data years",
    "router_init": "--router",
}


# Options recorded since a later version: what a run that recorded none of them trained.
_RECORDED_LATER: JSONObject = {"adapted_weights": "all"}


def _record_name(key: str) -> str:
    return _RECORD_NAMES.get(key) or flag_name(CoadaptConfig, key)


def strategy_options(cfg: MixtureConfig) -> JSONObject:
    """The options of mixture_run.json that one strategy alone has: coadapt's
    --adapted-weights (a rerun with the other would train the embedding in some stages
    and not in others)."""
    return {"adapted_weights": cfg.adapted_weights} if isinstance(cfg, CoadaptConfig) else {}


def record_conflicts(saved: JSONObject, new: JSONObject) -> list[str]:
    """One "field (run has X, flags give Y)" per setting of `new` a run recorded otherwise."""
    diffs = []
    for key, b in new.items():
        a = saved.get(key, _RECORDED_LATER.get(key))
        if a != b:
            if key == "experts" and isinstance(a, dict) and isinstance(b, Mapping):
                changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                a, b = f"other weights for {', '.join(changed)}", "these"
            diffs.append(f"{_record_name(key)} (run has {a}, flags give {b})")
    return diffs


def _read_record(run_dir: Path) -> JSONObject:
    path = run_dir / MIXTURE_RUN_FILENAME
    try:
        return read_json_object(path, "start over with --overwrite")
    except OSError as exc:
        raise TimoeError(f"{path} is unreadable ({exc}): start over with --overwrite") from None


def decide_mixture_run_dir(
    cfg: MixtureConfig, run_dir: Path, record: JSONObject, restart: bool, *,
    checkpointed: bool,
) -> RunDirAction:
    """`run_dir.decide_run_dir` for a mixture run (in one stage, or staged: `checkpointed`
    False), its recorded settings compared with `record`."""
    return decide_run_dir(
        run_dir,
        resume=cfg.resume,
        overwrite=cfg.overwrite,
        restart=restart,
        conflicts=lambda: record_conflicts(_read_record(run_dir), record),
        marker=MIXTURE_RUN_FILENAME,
        replaceable=BUNDLE_FILENAME,
        checkpointed=checkpointed,
    )


def clear_bundle_artifacts(run_dir: Path) -> None:
    """Remove what a bundle / mixture run wrote into `run_dir` (never anything else)."""
    for name in BUNDLE_ARTIFACTS:
        remove_output(Path(run_dir) / name)  # a link: only the link goes
