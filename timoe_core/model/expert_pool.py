"""The experts of a mixture as records on disk, loaded lazily and checksummed.

An `ExpertRecord` is what is known about one expert without reading its weights (its
run.json: slice, model config, tokenizer) and where its weights may be. `load_expert`
reads them the first time a query makes the expert eligible, verifying the recorded
sha256, so an ineligible expert's files are never opened. `find_run_dirs` turns
`--experts` arguments (run dirs and/or folders of run dirs) into records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from timoe_core.errors import TimoeError
from timoe_core.io import sha256_file
from timoe_core.model.gpt import GPT
from timoe_core.model.run_info import (
    MODEL_FILENAME,
    RUN_INFO_FILENAME,
    SNAPSHOT_INFO_FILENAME,
    RunInfo,
    read_run_info,
    read_snapshot_info,
)
from timoe_core.model.weights import load_weights_into
from timoe_core.timeslices import TimeSlice


@dataclass
class ExpertRecord:
    """One artefact of a slice: its final expert, a snapshot inside the slice, or an
    expert derived from one (coadapt's adapted experts, `generation` 1)."""

    info: RunInfo  # kind, slice, model config, tokenizer; read without any weights
    candidates: list[Path]  # folders that may hold model.safetensors, in order
    sha256: str | None  # expected checksum; None until first read (from run dirs)
    embedded: bool = False
    # Latest date of any text that shaped these weights; None: the run's data_cutoff.
    data_cutoff: date | None = None
    generation: int = 0  # derived artefacts come after their base of the same cutoff
    # A snapshot read from a run dir: its folder (whose snapshot.json gave sha256); a
    # snapshot never finished has none, and is refused when it is to be loaded.
    snapshot_folder: Path | None = None

    @property
    def time_slice(self) -> TimeSlice:
        return self.info.time_slice

    @property
    def label(self) -> str:
        return self.info.slice_label

    @property
    def cutoff(self) -> date:
        return self.data_cutoff if self.data_cutoff is not None else self.info.cutoff

    @property
    def key(self) -> str:
        """The artefact's name: slice, cutoff, and a mark per derivation."""
        return f"{self.label}@{self.cutoff.isoformat()}" + "+adapted" * self.generation

    @property
    def order(self) -> tuple[date, int]:
        return self.cutoff, self.generation

    def weights_dir(self) -> Path:
        for d in self.candidates:
            if (d / MODEL_FILENAME).is_file():
                return d
        tried = " nor ".join(str(d / MODEL_FILENAME) for d in self.candidates)
        raise TimoeError(
            f"the weights of expert {self.label} are missing: {tried} does not exist "
            "(restore the run dir or rebuild the bundle with `timoe train-router`)"
        )


def load_expert(rec: ExpertRecord) -> GPT:
    """The expert's GPT on CPU, its weights checked against `rec.sha256` (then recorded)."""
    if rec.snapshot_folder is not None and rec.sha256 is None:
        read_snapshot_info(rec.snapshot_folder)  # missing: TimoeError naming it
    directory = rec.weights_dir()
    path = directory / MODEL_FILENAME
    digest = sha256_file(path)
    if rec.sha256 is not None and digest != rec.sha256:
        raise TimoeError(
            f"{path} fails its checksum (sha256 {digest[:12]}…, the bundle records "
            f"{rec.sha256[:12]}…): the expert of {rec.label} was changed or replaced; "
            "rebuild the bundle with `timoe train-router`"
        )
    rec.sha256 = digest
    _check_run_info_agrees(rec, directory)
    return load_weights_into(GPT(rec.info.model_config_, init_weights=False), directory)


def _check_run_info_agrees(rec: ExpertRecord, directory: Path) -> None:
    """The expert's own run.json must say what the bundle (or folder) records of it: a
    timoe.json with two slice labels swapped would otherwise let the 2017 expert answer
    as of 2013."""
    own = read_run_info(directory)
    diffs = [
        f"{name} (run.json has {a!r}, the bundle records {b!r})"
        for name, a, b in (
            ("slice", own.slice_label, rec.info.slice_label),
            ("kind", own.kind, rec.info.kind),
            ("start date", own.start_date, rec.info.start_date),
            ("end date", own.end_date, rec.info.end_date),
            ("model config", own.model_config_.model_dump(), rec.info.model_config_.model_dump()),
        )
        if a != b
    ]
    if diffs:
        raise TimoeError(
            f"the expert recorded as {rec.label} in the bundle is {directory}, whose "
            f"{RUN_INFO_FILENAME} disagrees: {'; '.join(diffs)}: rebuild the bundle with "
            "`timoe train-router`"
        )


def check_compatible(records: list[ExpertRecord]) -> None:
    """Experts must share the tokenizer and vocab size; slices must not overlap."""
    first = records[0]
    for rec in records[1:]:
        for key in sorted(set(first.info.tokenizer) | set(rec.info.tokenizer)):
            a, b = first.info.tokenizer.get(key), rec.info.tokenizer.get(key)
            if a != b:
                raise TimoeError(
                    f"experts disagree on tokenizer.{key}: {first.label} has {a!r}, {rec.label} "
                    f"has {b!r}; every expert of a mixture must use the same tokenizer"
                )
        a, b = first.info.model_config_.vocab_size, rec.info.model_config_.vocab_size
        if a != b:
            raise TimoeError(
                f"experts disagree on model_config.vocab_size: {first.label} has {a}, "
                f"{rec.label} has {b}; every expert of a mixture must share the vocabulary"
            )
    ordered = sorted({r.label: r for r in records}.values(), key=lambda r: r.time_slice)
    for prev, cur in zip(ordered, ordered[1:]):
        if cur.time_slice.start_year <= prev.time_slice.end_year:
            raise TimoeError(
                f"expert slices overlap: {prev.label} ({prev.candidates[0]}) and {cur.label} "
                f"({cur.candidates[0]}); give one expert per time slice"
            )


def find_run_dirs(paths: Iterable[Path | str]) -> list[tuple[Path, RunInfo]]:
    """Expert run dirs from run dirs and/or folders of run dirs.

    A dense run found inside a folder is skipped (a runs/ folder often holds the dense
    baseline too); a dense run named directly is an error.
    """
    found: list[tuple[Path, RunInfo]] = []
    for p in paths:
        p = Path(p)
        if (p / "run.json").is_file():
            info = read_run_info(p)
            if info.kind != "expert":
                raise TimoeError(
                    f"--experts {p} is a {info.kind} run, not a time-slice expert: "
                    "give expert run dirs (trained with `timoe train-expert --year`)"
                )
            found.append((p, info))
        elif p.is_dir():
            subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / "run.json").is_file())
            if not subs:
                raise TimoeError(
                    f"--experts {p} is neither an expert run dir (no run.json) nor a folder "
                    "of run dirs: train experts with `timoe train-expert --year` first"
                )
            for d in subs:
                info = read_run_info(d)
                if info.kind == "expert":
                    found.append((d, info))
        else:
            raise TimoeError(f"--experts {p} does not exist")
    if not found:
        raise TimoeError("no expert run dirs found under --experts: only dense runs were there")
    by_label: dict[str, Path] = {}
    for d, info in found:
        if info.slice_label in by_label:
            raise TimoeError(
                f"two experts for slice {info.slice_label}: {by_label[info.slice_label]} and {d}; "
                "give one run dir per slice"
            )
        by_label[info.slice_label] = d
    return found


def records_from_run_dirs(paths: Iterable[Path | str]) -> list[ExpertRecord]:
    """The artefacts of every expert run dir found under `paths`: its final weights and
    each snapshot its run.json lists (no weights read)."""
    out = []
    for d, info in find_run_dirs(paths):
        out.extend(run_dir_artefacts(Path(d), info))
    return out


def run_dir_artefacts(run_dir: Path, info: RunInfo) -> list[ExpertRecord]:
    """A run dir's snapshots (earliest first), then its final weights."""
    run_dir = Path(run_dir).resolve()
    out = []
    for snap in info.snapshots:
        folder = run_dir / snap["path"]
        sha = None
        if (folder / SNAPSHOT_INFO_FILENAME).is_file():  # else unfinished: refused on load
            meta = read_snapshot_info(folder)  # of the wrong shape: TimoeError naming it
            if meta.data_cutoff != snap["data_cutoff"]:
                raise TimoeError(
                    f"{folder / SNAPSHOT_INFO_FILENAME} is corrupt (data_cutoff "
                    f"{meta.data_cutoff}, run.json lists {snap['data_cutoff']}): restore the "
                    "snapshot, or retrain the run"
                )
            sha = meta.sha256
            # its own run.json (written before snapshot.json) records what it read, a
            # partial year included, which the run's record cannot say
            snap_info = read_run_info(folder) if (folder / RUN_INFO_FILENAME).is_file() else info
        out.append(ExpertRecord(info=info if sha is None else snap_info, candidates=[folder],
                                sha256=sha,
                                data_cutoff=date.fromisoformat(snap["data_cutoff"]),
                                snapshot_folder=folder))
    # An averaged snapshot at the run's own cutoff (its data ended inside its slice:
    # train.expert_stages.snapshot_stages) is what answers as of that cutoff, as in a run that
    # goes on; the final weights then are no point-in-time artefact.
    if not any(date.fromisoformat(s["data_cutoff"]) == info.cutoff for s in info.snapshots):
        out.append(ExpertRecord(info=info, candidates=[run_dir], sha256=None))
    return out
