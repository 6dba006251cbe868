"""A TiMoE bundle on disk: its schema, and reading and writing it.

    timoe.json            format_version, strategy, policy, options (MixtureOptions),
                          router (RouterConfig or null), router_sha256, tokenizer,
                          experts: [{slice_label, start_date, end_date, kind, path,
                          abs_path, embedded, weights_sha256, model_config}]
    router.safetensors    the router's weights (learned-avg, coadapt): the latest one
    routers/<date>/router.safetensors
                          a staged router's snapshots, one per data cutoff (timoe.json
                          `router_snapshots`: data_cutoff, path, sha256, config)
    experts/<label>/      coadapt only: adapted experts' model.safetensors + run.json
                          (a staged coadapt: experts/<label>@<date>+adapted/)

Each expert entry is one artefact: a slice's final expert, a snapshot inside the slice,
or an adapted expert, with its `data_cutoff` (the latest date of any text that shaped
it) and `generation` (0: trained by train-expert; 1: adapted from one).
    config.yaml           the resolved command config (written by the CLI)

An expert's `path` is its run dir relative to the bundle (or `experts/<label>` inside
it); `abs_path` is the same dir as an absolute path, tried when the relative one does
not resolve (a bundle moved without its runs). Either way the weights must match
`weights_sha256`, checked when the expert is loaded (`expert_pool.load_expert`).
timoe.json is written last, so a folder holding it is a complete bundle. Reading a
bundle reads timoe.json and the small router only, never an expert's weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from timoe_core import __version__
from timoe_core.config import MixtureOptions
from timoe_core.errors import TimoeError
from timoe_core.io import (
    atomic_write_json,
    read_metadata,
    sha256_file,
)
from timoe_core.model.expert_pool import ExpertRecord
from timoe_core.model.gpt import GPT, GPTConfig
from timoe_core.model.router import Router, RouterConfig, RouterSnapshot
from timoe_core.model.run_info import MODEL_FILENAME, RunInfo, write_run_info
from timoe_core.model.weights import (
    StorageDtype,
    check_state_matches,
    check_weights_usable,
    copy_weights_file,
    read_weights_file,
    save_model_weights,
    untied_state,
    weights_file_holds,
    write_weights_file,
)

BUNDLE_FILENAME = "timoe.json"
ROUTER_FILENAME = "router.safetensors"
EMBEDDED_EXPERTS_DIR = "experts"
ROUTER_SNAPSHOTS_DIR = "routers"
BUNDLE_FORMAT_VERSION = 1


class ExpertSpec(BaseModel):
    """One expert of a bundle: which slice, where its weights are, their checksum."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    slice_label: str
    start_date: str
    end_date: str
    kind: str = "expert"
    path: str
    abs_path: str | None = None
    embedded: bool = False
    weights_sha256: str
    gpt_config: GPTConfig = Field(alias="model_config")
    data_cutoff: str | None = None  # None: the slice's end (bundles written before cutoffs)
    generation: int = 0


class RouterSnapshotSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_cutoff: str
    path: str
    sha256: str
    config: RouterConfig


class BundleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int
    strategy: str
    policy: str
    options: dict[str, Any]
    router: RouterConfig | None = None
    router_sha256: str | None = None
    tokenizer: dict[str, Any]
    experts: list[ExpertSpec]
    router_data_cutoff: str | None = None  # the single router's cutoff (not staged)
    router_snapshots: list[RouterSnapshotSpec] = Field(default_factory=list)
    timoe_version: str | None = None


@dataclass
class BundleContents:
    """What `read_bundle` gives: enough to build the mixture, no expert weights read."""

    records: list[ExpertRecord]
    strategy: str
    options: MixtureOptions
    router: Router | None
    router_snapshots: list[RouterSnapshot] = field(default_factory=list)
    router_data_cutoff: date | None = None


def read_bundle(bundle_dir: Path | str) -> BundleContents:
    """timoe.json and the router of a bundle, validated (TimoeError naming the fix)."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / BUNDLE_FILENAME
    if not path.is_file():
        raise TimoeError(
            f"{bundle_dir} is not a TiMoE bundle (no {BUNDLE_FILENAME}): build one with "
            "`timoe train-router --experts RUNS --out DIR`"
        )
    spec = read_metadata(path, BundleSpec, "rebuild the bundle")
    if spec.format_version != BUNDLE_FORMAT_VERSION:
        raise TimoeError(
            f"{path} has format version {spec.format_version}, this timoe reads "
            f"{BUNDLE_FORMAT_VERSION}: rebuild the bundle with `timoe train-router`"
        )
    if not spec.experts:
        raise TimoeError(f"{path} lists no experts: rebuild the bundle")
    records = []
    for e in spec.experts:
        rel = Path(e.path)
        candidates = [rel if rel.is_absolute() else (bundle_dir / rel).resolve()]
        if e.abs_path and Path(e.abs_path) not in candidates:
            candidates.append(Path(e.abs_path))
        info = RunInfo(
            kind="expert", slice_label=e.slice_label, start_date=e.start_date,
            end_date=e.end_date, model_config_=e.gpt_config, tokenizer=spec.tokenizer,
            data_cutoff=e.data_cutoff,
        )
        records.append(ExpertRecord(info, candidates, e.weights_sha256, e.embedded,
                                    generation=e.generation))
    try:
        options = MixtureOptions.model_validate({**spec.options, "policy": spec.policy})
    except ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise TimoeError(f"{path} has invalid mixture options ({first})") from None
    router = None
    if spec.router is not None:
        router = Router(spec.router)
        state = load_router_weights(bundle_dir, spec.router_sha256)
        check_state_matches(router, state, bundle_dir / ROUTER_FILENAME, BUNDLE_FILENAME,
                            "rebuild the bundle")
        check_weights_usable(state, bundle_dir / ROUTER_FILENAME, "rebuild the bundle")
        router.load_state_dict(state)
    snapshots = []
    for r in spec.router_snapshots:
        snap = Router(r.config)
        folder = bundle_dir / r.path
        state = load_router_weights(folder, r.sha256)
        check_state_matches(snap, state, folder / ROUTER_FILENAME, BUNDLE_FILENAME,
                            "rebuild the bundle")
        snap.load_state_dict(state)
        snapshots.append(RouterSnapshot(date.fromisoformat(r.data_cutoff), snap))
    if spec.strategy != "avg" and router is None:
        raise TimoeError(f"{path} says strategy {spec.strategy} but holds no router")
    cutoff = date.fromisoformat(spec.router_data_cutoff) if spec.router_data_cutoff else None
    return BundleContents(records, spec.strategy, options, router, snapshots, cutoff)


def router_snapshot_dir(bundle_dir: Path, cutoff: date) -> Path:
    """Where a bundle (or a staged run's OUT) keeps the router snapshot of `cutoff`."""
    return Path(bundle_dir) / ROUTER_SNAPSHOTS_DIR / cutoff.isoformat()


def embedded_dirname(rec: ExpertRecord) -> str:
    """Folder of an embedded expert under experts/: its slice, or for a derived
    artefact of a staged run its name (slice@cutoff+adapted)."""
    return rec.label if rec.generation == 0 else rec.key


def write_bundle(
    out_dir: Path | str,
    records: Sequence[ExpertRecord],
    loaded: Mapping[str, GPT],
    embedded: set[str],
    strategy: str,
    options: MixtureOptions,
    router: Router | None,
    router_snapshots: Sequence[RouterSnapshot] = (),
    router_data_cutoff: date | None = None,
    dtype: StorageDtype = "float32",
) -> None:
    """Write a bundle over the artefacts `records`; those whose key is in `embedded` get
    their weights copied into it (from memory when in `loaded`, keyed by artefact key: an
    adapted expert). Adapted experts, the router and its snapshots are stored as `dtype`.
    timoe.json is written last, and the records are updated to what the bundle now
    holds."""
    out_dir = Path(out_dir).resolve()
    sources = {  # every expert's weights must be there before anything is written
        rec.key: rec.weights_dir() for rec in records
        if rec.key not in embedded or rec.key not in loaded
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = []
    for rec in records:
        embed = rec.key in embedded
        if embed:
            target = out_dir / EMBEDDED_EXPERTS_DIR / embedded_dirname(rec)
            if rec.key in loaded:
                # a staged run stored it there already (maybe as a delta from its parent)
                state = untied_state(loaded[rec.key].state_dict())
                if not weights_file_holds(target / MODEL_FILENAME, state, dtype):
                    save_model_weights(target, loaded[rec.key], dtype)
            else:
                src = sources[rec.key] / MODEL_FILENAME
                if src.resolve() != (target / MODEL_FILENAME).resolve():
                    copy_weights_file(src, target / MODEL_FILENAME)
            write_run_info(target, rec.info.at_cutoff(rec.cutoff))
            weights = target
        else:
            weights = sources[rec.key]
        digest = sha256_file(weights / MODEL_FILENAME)
        if not embed and rec.sha256 is not None and digest != rec.sha256:
            raise TimoeError(
                f"{weights / MODEL_FILENAME} changed since it was read (sha256 mismatch): "
                "rebuild the bundle from the current run dirs"
            )
        rel = os.path.relpath(weights, out_dir)
        specs.append(
            ExpertSpec(
                slice_label=rec.label, start_date=rec.info.start_date,
                end_date=rec.info.end_date, kind=rec.info.kind, path=rel, abs_path=str(weights),
                embedded=embed, weights_sha256=digest, gpt_config=rec.info.model_config_,
                data_cutoff=rec.cutoff.isoformat(), generation=rec.generation,
            )
        )
    snapshot_specs = []
    folder: Path | None = None
    for snap in router_snapshots:
        parent, folder = folder, router_snapshot_dir(out_dir, snap.data_cutoff)
        sha = (sha256_file(folder / ROUTER_FILENAME)
               if weights_file_holds(folder / ROUTER_FILENAME, snap.router.state_dict(), dtype)
               else save_router_weights(folder, snap.router, dtype,
                                        parent and parent / ROUTER_FILENAME))
        snapshot_specs.append({
            "data_cutoff": snap.data_cutoff.isoformat(),
            "path": os.path.relpath(folder, out_dir),
            "sha256": sha,
            "config": json.loads(snap.router.config.model_dump_json()),
        })
    router_sha = None
    if router is not None:  # the latest router: the last snapshot's weights, mostly
        router_sha = save_router_weights(out_dir, router, dtype,
                                         folder and folder / ROUTER_FILENAME)
    else:
        (out_dir / ROUTER_FILENAME).unlink(missing_ok=True)
    bundle = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "strategy": strategy,
        "policy": options.policy,
        "options": json.loads(options.model_dump_json()),
        "router": json.loads(router.config.model_dump_json()) if router else None,
        "router_sha256": router_sha,
        "tokenizer": dict(records[0].info.tokenizer),
        "experts": [json.loads(s.model_dump_json(by_alias=True)) for s in specs],
        "router_data_cutoff": router_data_cutoff.isoformat() if router_data_cutoff else None,
        "router_snapshots": snapshot_specs,
        "timoe_version": __version__,
    }
    atomic_write_json(out_dir / BUNDLE_FILENAME, bundle)
    for rec, spec in zip(records, specs):  # what the bundle now records
        rec.sha256 = spec.weights_sha256
        if spec.embedded:
            rec.embedded, rec.candidates = True, [out_dir / spec.path]


def save_router_weights(directory: Path, router: Router, dtype: StorageDtype = "float32",
                        parent: Path | None = None) -> str:
    """`directory`/router.safetensors, atomically (a bundle or a training checkpoint), its
    floating-point tensors stored as `dtype` (loading copies them into the float32
    router), as a delta from the router file `parent` where that is smaller; returns its
    sha256."""
    path = Path(directory) / ROUTER_FILENAME
    write_weights_file(path, router.state_dict(), dtype, parent)
    return sha256_file(path)


def load_router_weights(
    directory: Path, expected_sha: str | None = None
) -> dict[str, torch.Tensor]:
    """The state dict in `directory`/router.safetensors (checksum verified when given)."""
    path = Path(directory) / ROUTER_FILENAME
    if not path.is_file():
        raise TimoeError(f"{path} is missing: the bundle's router weights are gone; rebuild it")
    if expected_sha is not None and sha256_file(path) != expected_sha:
        raise TimoeError(f"{path} fails its checksum: the router was changed; rebuild the bundle")
    return read_weights_file(path, "rebuild the bundle")
