"""`train-expert --init-from SRC`: the weights a run starts from, what they read, and the
chain recorded in run.json.

SRC is one of (tried in this order):
- `previous`: the final expert of the slice just before this run's, in the folder that
  holds --out (where `timoe demo` and the docs put one run dir per slice);
- `hf:ORG/NAME[@REV]`: a GPTBase or GPT-2 folder from the hub cache (`model.hub`);
- `BUNDLE:MEMBER`: an expert of a TiMoE bundle, MEMBER `expert:YEAR` (the latest
  artefact of the slice holding YEAR, as `evaluate --strategy expert:YEAR` names it), a
  slice label (`2015-2016`) or an artefact key (`2015-2016@2015-12-31`);
- a snapshot folder (`RUN/snapshots/<date>`, it holds snapshot.json);
- a run dir (run.json: an expert, dense, base or imported run);
- a GPTBase or transformers GPT-2 folder (config.json, `model.foreign`).

What SRC read shapes the new run, so (DESIGN: the cutoff of an artefact covers the model
it was initialised from) every artefact of the run has a data_cutoff of at least SRC's:
a timoe SRC records its own; a foreign folder records none, so `--init-cutoff DATE`
must state it. Only a run dir has a trainer checkpoint, so only it can give
`--init-optimizer` its AdamW state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
from safetensors import safe_open

from timoe_core.errors import TimoeError
from timoe_core.io import sha256_file
from timoe_core.model.bundle import BUNDLE_FILENAME, read_bundle
from timoe_core.model.expert_pool import ExpertRecord
from timoe_core.model.foreign import (
    ForeignFormat,
    foreign_format,
    foreign_weights_file,
    read_foreign_model,
)
from timoe_core.model.gpt import GPT, GPTConfig
from timoe_core.model.hub import is_hub_reference, resolve_model_path
from timoe_core.model.run_info import (
    MODEL_FILENAME,
    RUN_INFO_FILENAME,
    SNAPSHOT_INFO_FILENAME,
    InitKind,
    InitRecord,
    RunInfo,
    read_run_info,
    read_snapshot_info,
    run_progress,
    unfinished_run_line,
)
from timoe_core.model.weights import DELTA_METADATA, check_weights_usable, load_model_weights
from timoe_core.timeslices import TimeSlice, TimeSlicing, parse_query_date
from timoe_core.train import state as ckpt_state

PREVIOUS = "previous"


@dataclass(frozen=True)
class InitSource:
    """A resolved --init-from: where its weights are and what they are."""

    record: InitRecord
    folder: Path  # holds the weights (model.safetensors, or a foreign folder's files)
    foreign: ForeignFormat | None  # None: timoe's own model.safetensors
    tokenizer: dict[str, object] | None  # from its run.json (None: a foreign folder)
    checkpoint: ckpt_state.Checkpoint | None  # a run dir's latest trainer checkpoint

    @property
    def cutoff(self) -> date:
        return self.record.cutoff

    def load_state(self) -> dict[str, torch.Tensor]:
        """Its weights in timoe's names (lm_head tied to wte), checked usable."""
        if self.foreign is not None:
            return dict(read_foreign_model(self.foreign, self.folder).state_dict())
        state = load_model_weights(self.folder)
        if "wte.weight" in state:
            state["lm_head.weight"] = state["wte.weight"]
        check_weights_usable(state, self.folder / MODEL_FILENAME, "give another --init-from")
        return state

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of its weights, reading a timoe file's header only."""
        if self.foreign is not None:
            return {k: tuple(v.shape) for k, v in self.load_state().items()}
        path = self.folder / MODEL_FILENAME
        try:
            with safe_open(str(path), framework="pt") as f:
                delta = DELTA_METADATA in (f.metadata() or {})
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise TimoeError(f"--init-from {self.record.spec}: {path} is not readable "
                             f"safetensors ({exc}): give another --init-from") from None
        if delta:  # stored as a delta from its parent: the header lists the changes only
            return {k: tuple(v.shape) for k, v in self.load_state().items()}
        if "wte.weight" in shapes:
            shapes["lm_head.weight"] = shapes["wte.weight"]
        return shapes

    def optimizer_state(self) -> dict:
        """The AdamW state of its latest trainer checkpoint (verified)."""
        assert self.checkpoint is not None
        return ckpt_state.load_trainer_state(self.checkpoint)["optimizer"]


def check_fits(src: InitSource, model_config: GPTConfig, tokenizer: dict[str, object]) -> None:
    """TimoeError naming the tensor (up to 3) or tokenizer field where SRC's weights do
    not fit the model this run trains: they would be another model. One difference is
    allowed: an embedding with fewer rows than this run's padded vocab, but every token
    of the data (GPT-2's own 50,257, as transformers stores it): `load_init_weights`
    keeps this run's initialisation for the padding rows, which are never a token id."""
    spec = src.record.spec
    if src.tokenizer is not None:
        for key in ("name", "eot_token"):
            if key in src.tokenizer and src.tokenizer.get(key) != tokenizer.get(key):
                raise TimoeError(
                    f"--init-from {spec} has tokenizer.{key} {src.tokenizer.get(key)!r}, the "
                    f"data has {tokenizer.get(key)!r}: its weights read other token ids; give "
                    "an --init-from of the same tokenizer"
                )
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(model_config).state_dict().items()}
    got = src.tensor_shapes()
    real_vocab = int(str(tokenizer.get("vocab_size", model_config.vocab_size)))
    for name in ("wte.weight", "lm_head.weight"):
        if (name in got and len(got[name]) == 2 and got[name][1] == expected[name][1]
                and real_vocab <= got[name][0] < expected[name][0]):
            got[name] = expected[name]  # padded on load
    diffs = [f"{k} is missing" for k in expected if k not in got]
    diffs += [f"{k} is unexpected" for k in got if k not in expected]
    diffs += [f"{k} has shape {got[k]}, this run's model {v}" for k, v in expected.items()
              if k in got and got[k] != v]
    if diffs:
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise TimoeError(
            f"--init-from {spec} does not fit this run's model ({'; '.join(diffs[:3])}{more}): "
            "give the same --preset/--n-layer/--n-head/--n-embd/--seq-len as the model it "
            "holds, or another --init-from"
        )


def resolve_init_source(
    spec: str,
    run_dir: Path,
    *,
    time_slice: TimeSlice,
    slicing: TimeSlicing,
    kind: str,
    init_cutoff: str | None,
    optimizer: bool,
) -> InitSource:
    """Resolve --init-from `spec` for a run in `run_dir`; TimoeError, nothing written."""
    stated = parse_query_date(init_cutoff) if init_cutoff is not None else None
    if spec == PREVIOUS:
        src = _resolve_path(_previous_expert(run_dir, time_slice, slicing, kind), spec, "run")
    elif is_hub_reference(spec):
        src = _resolve_path(resolve_model_path(spec), spec, None)
    elif (member := _bundle_member(spec)) is not None:
        src = _resolve_bundle_expert(*member, spec)
    else:
        src = _resolve_path(Path(spec), spec, None)
    if src.record.data_cutoff == "" and stated is None:
        raise TimoeError(
            f"--init-from {spec} is a {src.foreign} folder, which records no data cutoff: state "
            "the date of the latest text its weights read with --init-cutoff DATE (it becomes "
            "this run's earliest possible cutoff)"
        )
    if stated is not None:  # a stated cutoff may only make the weights later, never earlier
        recorded = src.record.data_cutoff
        if recorded and stated < date.fromisoformat(recorded):
            raise TimoeError(
                f"--init-cutoff {init_cutoff} is before {spec}'s recorded data cutoff {recorded}: "
                "its weights read text up to then; leave --init-cutoff out or give a later date"
            )
        src = _with(src, data_cutoff=stated.isoformat())
    if optimizer:
        if src.checkpoint is None:
            raise TimoeError(
                f"--init-optimizer: --init-from {spec} is a {src.record.kind} with no trainer "
                "checkpoint (only a run dir that keeps checkpoints/ has an optimizer state): "
                "leave --init-optimizer out to take its weights only"
            )
        src = _with(src, optimizer=True)
    rel = os.path.relpath(src.folder.resolve(), Path(run_dir).absolute().resolve())
    return _with(src, path=rel)


def _with(src: InitSource, **update: object) -> InitSource:
    return InitSource(src.record.model_copy(update=update), src.folder, src.foreign,
                      src.tokenizer, src.checkpoint)


def _previous_expert(run_dir: Path, time_slice: TimeSlice, slicing: TimeSlicing,
                     kind: str) -> Path:
    """The run dir of the expert of the slice before `time_slice` next to `run_dir`."""
    if kind != "expert":
        raise TimoeError(f"--init-from previous: a {kind} run has no preceding slice; give the "
                         "run dir to start from")
    slices = slicing.slices
    i = next((k for k, s in enumerate(slices) if s.label == time_slice.label), 0)
    if i == 0:
        raise TimoeError(
            f"--init-from previous: {time_slice.label} is the first slice, there is no expert "
            "before it; start it from a base (`timoe train-expert --base --until DATE`, then "
            "--init-from BASE_DIR) or leave --init-from out"
        )
    want = slices[i - 1].label
    parent = Path(run_dir).absolute().parent
    found = []
    if parent.is_dir():
        for d in sorted(parent.iterdir()):
            if d.is_dir() and (d / RUN_INFO_FILENAME).is_file() and d.resolve() != Path(
                    run_dir).absolute().resolve():
                info = read_run_info(d)
                if info.kind == "expert" and info.slice_label == want:
                    found.append(d)
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(str(d) for d in found)})"
        raise TimoeError(
            f"--init-from previous: {parent} holds {what} expert run dir of the slice {want} "
            f"before {time_slice.label}: train it there first (`timoe train-expert --year "
            f"{slices[i - 1].start_year} --out {parent}/...`), or give its run dir"
        )
    return found[0]


def _resolve_path(folder: Path, spec: str, expect: InitKind | None) -> InitSource:
    if not folder.is_dir():
        raise TimoeError(f"--init-from {spec}: {folder} is not a folder: give a run dir, a "
                         "snapshot folder, BUNDLE:expert:YEAR, a GPTBase or GPT-2 folder, "
                         "hf:ORG/NAME or previous")
    if (folder / SNAPSHOT_INFO_FILENAME).is_file():
        meta = read_snapshot_info(folder)
        _check_sha(folder, meta.sha256, spec, SNAPSHOT_INFO_FILENAME)
        info = read_run_info(folder)
        return _timoe_source(folder, spec, "snapshot", meta.sha256, date.fromisoformat(
            meta.data_cutoff), info, None)
    if (folder / RUN_INFO_FILENAME).is_file():
        progress = run_progress(folder)
        if progress is not None and not progress.finished:
            raise TimoeError(f"--init-from {spec}: {unfinished_run_line(folder, progress)}")
        info = read_run_info(folder)
        if not (folder / MODEL_FILENAME).is_file():
            raise TimoeError(f"--init-from {spec}: {folder / MODEL_FILENAME} is missing: the "
                             "run has no saved weights yet; train it first")
        return _timoe_source(folder, spec, "run", sha256_file(folder / MODEL_FILENAME),
                             info.cutoff, info, ckpt_state.latest_checkpoint(folder))
    if expect is None and (folder / "config.json").is_file():
        fmt = foreign_format(folder)
        record = InitRecord.model_construct(  # its cutoff is stated by --init-cutoff
            spec=spec, kind=fmt, path=str(folder), sha256=sha256_file(foreign_weights_file(
                folder)), data_cutoff="", optimizer=False, init_from=None)
        return InitSource(record, folder, fmt, None, None)
    raise TimoeError(
        f"--init-from {spec}: {folder} holds no {RUN_INFO_FILENAME}, {SNAPSHOT_INFO_FILENAME} "
        "or config.json: give a run dir, a snapshot folder, BUNDLE:expert:YEAR, a GPTBase or "
        "GPT-2 folder, hf:ORG/NAME or previous"
    )


def _timoe_source(folder: Path, spec: str, kind: InitKind, sha: str, cutoff: date,
                  info: RunInfo, checkpoint: ckpt_state.Checkpoint | None) -> InitSource:
    record = InitRecord(spec=spec, kind=kind, path=str(folder), sha256=sha,
                        data_cutoff=cutoff.isoformat(), init_from=info.init_from)
    return InitSource(record, folder, None, dict(info.tokenizer), checkpoint)


def _check_sha(folder: Path, sha: str, spec: str, where: str) -> None:
    path = folder / MODEL_FILENAME
    if not path.is_file() or sha256_file(path) != sha:
        raise TimoeError(f"--init-from {spec}: {path} is missing or fails its sha256 check "
                         f"against {where}: it was changed or damaged; restore it")


def _bundle_member(spec: str) -> tuple[Path, str] | None:
    """(bundle folder, member) when `spec` is BUNDLE:MEMBER with BUNDLE a bundle."""
    for i, ch in enumerate(spec):
        if ch == ":" and (Path(spec[:i]) / BUNDLE_FILENAME).is_file():
            return Path(spec[:i]), spec[i + 1:]
    return None


def _resolve_bundle_expert(bundle: Path, member: str, spec: str) -> InitSource:
    records = read_bundle(bundle).records
    chosen: list[ExpertRecord]
    if member.startswith("expert:") and member[7:].isdigit():
        year = int(member[7:])
        chosen = [r for r in records if r.time_slice.contains_year(year)]
    elif "@" in member:
        chosen = [r for r in records if r.key == member]
    else:
        chosen = [r for r in records if r.label == member]
    if not chosen:
        names = ", ".join(sorted({r.key for r in records}))
        raise TimoeError(f"--init-from {spec}: the bundle {bundle} has no expert {member!r}: "
                         f"give expert:YEAR, a slice label or one of {names}")
    rec = max(reversed(chosen), key=lambda r: r.order)  # the slice's latest artefact
    folder = rec.weights_dir()
    sha = sha256_file(folder / MODEL_FILENAME)
    if rec.sha256 is not None and sha != rec.sha256:
        raise TimoeError(f"--init-from {spec}: {folder / MODEL_FILENAME} fails its sha256 check "
                         f"against {bundle / BUNDLE_FILENAME}: rebuild the bundle")
    own = read_run_info(folder) if (folder / RUN_INFO_FILENAME).is_file() else rec.info
    return _timoe_source(folder, spec, "bundle-expert", sha, rec.cutoff, own, None)


def load_init_weights(model: GPT, src: InitSource) -> None:
    """SRC's weights into `model` (checked by `check_fits`); embedding rows SRC lacks (the
    vocab's padding) keep `model`'s own initialisation."""
    state = src.load_state()
    wte = state.get("wte.weight")
    if wte is not None and wte.shape[0] < model.wte.weight.shape[0]:
        padded = model.wte.weight.detach().clone()
        padded[: wte.shape[0]] = wte
        state["wte.weight"] = state["lm_head.weight"] = padded
    model.load_state_dict(state, strict=True)
