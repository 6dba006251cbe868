"""TiMoE: time-slice experts combined in log-probability space (DESIGN.md §2).

For a query date d, eligible experts E(d) and weights w_k summing to 1 over E(d):

    log P(x_{t+1} | x_{1..t})
        = logsumexp_{k in E(d)} ( log w_k(x_{1..t}) + log P_k(x_{t+1} | x_{1..t}) )

Strategies: `avg` (w_k = 1/|E(d)|, no router), `learned-avg` (a causal router, experts
frozen), `coadapt` (router plus experts adapted by training, stored in the bundle).

Invariants kept here, each tested in tests/test_mixture.py:
- causal validity: only experts eligible for a row are loaded and run, and only on that
  row; an ineligible expert's weights or files are never read for that query;
- proper distribution: ineligible experts are excluded (log-weight -inf), never zeroed;
- causal in the sequence: experts are causal decoders, the router pools a prefix mean;
- eligibility by date: `timeslices.eligible_slices` (inclusive/strict), never by index.

Cost model:
- `mixture_log_probs` streams expert by expert: each eligible expert's final hidden
  states, then its vocab projection in chunks of positions, log-softmax in place, folded
  into one (B, T, V) output with `logaddexp` in place. Peak memory is the output, one
  chunk and one expert's activations, whatever the number of experts; nothing of shape
  (experts, B, T, V) is ever built.
- `forward` / `mixture_target_log_probs` (training and evaluation) never build a
  vocab-sized mixture: each expert gives only log P_k(target) (B, T), computed chunk by
  chunk, and the mixture is a logsumexp over K of (B, T, K).
- Training hooks: `set_trainable_experts` / `forward(trainable=...)` run the named
  experts with gradients and every other expert under no_grad; `cached_expert_log_probs`
  skips frozen experts entirely (their target log-probs read from a cache, see
  `experts_target_log_probs`); `router_aux` carries the auxiliary losses.
- Generation: `next_log_probs` keeps a KV cache per eligible expert and the router's
  running prefix sum, and projects only the last position onto the vocabulary.

Bundle directory (`save_bundle` / `from_bundle`):

    timoe.json            format_version, strategy, policy, options (MixtureOptions),
                          router (RouterConfig or null), router_sha256, tokenizer,
                          experts: [{slice_label, start_date, end_date, kind, path,
                          abs_path, embedded, weights_sha256, model_config}]
    router.safetensors    the router's weights (learned-avg, coadapt)
    experts/<label>/      coadapt only: adapted experts' model.safetensors + run.json
    config.yaml           the resolved command config (written by the CLI)

An expert's `path` is its run dir relative to the bundle (or `experts/<label>` inside
it); `abs_path` is the same dir as an absolute path, tried when the relative one does
not resolve (a bundle moved without its runs). Either way the weights must match
`weights_sha256`, checked when the expert is loaded. timoe.json is written last, so a
folder holding it is a complete bundle. Loading a bundle reads timoe.json and the small
router only; each expert's weights are read the first time a query makes it eligible.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from timoe_core import __version__
from timoe_core.checkpoint import (
    MODEL_FILENAME,
    RUN_INFO_FILENAME,
    RunInfo,
    check_state_matches,
    check_weights_usable,
    load_weights_into,
    read_run_info,
    save_model_weights,
    save_safetensors,
    write_run_info,
)
from timoe_core.config import MixtureOptions
from timoe_core.data.manifest import sha256_file
from timoe_core.errors import TimoeError, describe_validation_error
from timoe_core.io import atomic_path, atomic_write_json, read_small_file, write_failure_as_os_error
from timoe_core.model.gpt import GPT, GPTConfig, KVCache
from timoe_core.model.router import Router, RouterAux, RouterConfig, RouterOutput, RouterState
from timoe_core.timeslices import (
    POLICIES,
    TimeSlice,
    eligible_slices,
    parse_query_date,
)

BUNDLE_FILENAME = "timoe.json"
ROUTER_FILENAME = "router.safetensors"
EMBEDDED_EXPERTS_DIR = "experts"
BUNDLE_FORMAT_VERSION = 1
STRATEGIES: tuple[str, ...] = ("avg", "learned-avg", "coadapt")

# One chunk of vocab-sized log-probs (positions x vocab x 4 bytes) is about this big.
CHUNK_BYTES = 32 << 20
MIN_CHUNK_TOKENS = 64

QueryDate = str | int | date
QueryDates = QueryDate | Sequence[QueryDate] | torch.Tensor | np.ndarray


# ---------------------------------------------------------------- bundle schema


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
    timoe_version: str | None = None


# ------------------------------------------------------------------ internals


@dataclass
class _ExpertRecord:
    info: RunInfo  # kind, slice, model config, tokenizer; read without any weights
    candidates: list[Path]  # folders that may hold model.safetensors, in order
    sha256: str | None  # expected checksum; None until first read (from run dirs)
    embedded: bool = False

    @property
    def time_slice(self) -> TimeSlice:
        return self.info.time_slice

    @property
    def label(self) -> str:
        return self.info.slice_label

    def weights_dir(self) -> Path:
        for d in self.candidates:
            if (d / MODEL_FILENAME).is_file():
                return d
        tried = " nor ".join(str(d / MODEL_FILENAME) for d in self.candidates)
        raise TimoeError(
            f"the weights of expert {self.label} are missing: {tried} does not exist "
            "(restore the run dir or rebuild the bundle with `timoe train-router`)"
        )


@dataclass
class MixtureOutput:
    """What `TiMoE.forward` returns; training losses need only `target_log_probs`."""

    target_log_probs: torch.Tensor  # (B, T) fp32 log P_mix(target)
    log_weights: torch.Tensor  # (B, T, K) fp32, -inf for excluded experts
    expert_log_probs: torch.Tensor  # (B, T, K) fp32 log P_k(target), -inf where not run
    eligible: torch.Tensor  # (B, K) bool
    router: RouterOutput | None = None
    router_aux: RouterAux | None = None


@dataclass
class MixtureState:
    """Incremental decoding state: KV cache per eligible expert and the router's prefix sum."""

    eligible: torch.Tensor  # (B, K) bool, fixed by the query dates
    caches: dict[str, KVCache] = field(default_factory=dict)
    router: RouterState | None = None
    length: int = 0  # tokens consumed so far


def _runs(rows: list[int], status: list[bool]) -> list[tuple[int, int, int, bool]]:
    """Maximal runs of consecutive row indices with equal status.

    Returns (global_start, global_end, local_start, status) for `rows` (sorted).
    """
    out: list[tuple[int, int, int, bool]] = []
    for local, row in enumerate(rows):
        st = status[row]
        if out and out[-1][1] == row and out[-1][3] == st:
            g0, _, l0, _ = out[-1]
            out[-1] = (g0, row + 1, l0, st)
        else:
            out.append((row, row + 1, local, st))
    return out


def _dates_per_row(query_dates: QueryDates, batch_size: int) -> list[date]:
    if query_dates is None:
        raise TimoeError("a TiMoE mixture needs a query date (one, or one per row)")
    if isinstance(query_dates, np.integer):
        query_dates = int(query_dates)
    if isinstance(query_dates, (str, int, date)):
        return [parse_query_date(query_dates)] * batch_size
    if isinstance(query_dates, (torch.Tensor, np.ndarray)):
        query_dates = query_dates.tolist()
    dates = list(query_dates)
    if len(dates) != batch_size:
        raise TimoeError(
            f"{len(dates)} query dates for a batch of {batch_size} rows: "
            "give one date or one per row"
        )
    return [parse_query_date(d) for d in dates]


def _check_compatible(records: list[_ExpertRecord]) -> None:
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
    ordered = sorted(records, key=lambda r: r.time_slice)
    for prev, cur in zip(ordered, ordered[1:]):
        if cur.time_slice.start_year <= prev.time_slice.end_year:
            raise TimoeError(
                f"expert slices overlap: {prev.label} ({prev.candidates[0]}) and {cur.label} "
                f"({cur.candidates[0]}); give one expert per time slice"
            )


def _find_run_dirs(paths: Iterable[Path | str]) -> list[tuple[Path, RunInfo]]:
    """Expert run dirs from run dirs and/or folders of run dirs (DESIGN.md §3 --experts).

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


# ---------------------------------------------------------------------- TiMoE


class TiMoE(nn.Module):
    """A time-aware mixture of GPT experts; see the module docstring."""

    def __init__(
        self,
        experts: list[_ExpertRecord],
        strategy: str = "avg",
        options: MixtureOptions | None = None,
        router: Router | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if not experts:
            raise TimoeError("a mixture needs at least one expert")
        _check_compatible(experts)
        self._records: dict[str, _ExpertRecord] = {
            r.label: r for r in sorted(experts, key=lambda r: r.time_slice)
        }
        self.slices: list[TimeSlice] = [r.time_slice for r in self._records.values()]
        self.options = (options or MixtureOptions()).model_copy()
        self.router = router
        self._experts = nn.ModuleDict()  # label -> GPT, filled lazily
        self.device = torch.device(device)
        self._trainable: set[str] = set()
        self._adapted: set[str] = set()  # experts changed in memory (coadapt): saved in the bundle
        self.chunk_tokens: int | None = None  # None: about CHUNK_BYTES of logits per chunk
        if router is not None:
            if router.config.slice_labels != [s.label for s in self.slices]:
                raise TimoeError(
                    f"the router's slots {router.config.slice_labels} do not match the experts "
                    f"{[s.label for s in self.slices]}"
                )
            if router.config.vocab_size != self.vocab_size:
                raise TimoeError(
                    f"the router's vocab_size {router.config.vocab_size} differs from the "
                    f"experts' {self.vocab_size}"
                )
            router.to(self.device)
        self._strategy = "avg"
        self.strategy = strategy

    # ----------------------------------------------------------- construction

    @classmethod
    def from_expert_dirs(
        cls,
        expert_dirs: Sequence[Path | str] | Path | str,
        strategy: str = "avg",
        options: MixtureOptions | None = None,
        device: str | torch.device = "cpu",
    ) -> "TiMoE":
        """A mixture over expert run dirs (or one folder whose sub-folders are run dirs).

        avg reads run.json files only. learned-avg / coadapt get a fresh router (output
        layer zero: it starts equal to avg) whose token table is seeded from the earliest
        expert's embeddings, which loads that expert.
        """
        if isinstance(expert_dirs, (str, Path)):
            expert_dirs = [expert_dirs]
        options = options or MixtureOptions()
        records = [
            _ExpertRecord(info=info, candidates=[Path(d).resolve()], sha256=None)
            for d, info in _find_run_dirs(expert_dirs)
        ]
        if strategy not in STRATEGIES:
            raise TimoeError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        router = None
        if strategy != "avg":
            ordered = sorted(records, key=lambda r: r.time_slice)
            router = Router(
                RouterConfig(
                    slice_labels=[r.label for r in ordered],
                    vocab_size=ordered[0].info.model_config_.vocab_size,
                    embed_dim=options.router_embed_dim,
                    hidden_dim=options.router_hidden_dim,
                    date_features=options.router_date_features,
                )
            )
        model = cls(records, strategy=strategy, options=options, router=router, device=device)
        if router is not None:
            router.init_embedding_from(model.expert(model.slices[0]).wte.weight)
        return model

    @classmethod
    def from_bundle(cls, bundle_dir: Path | str, device: str | torch.device = "cpu") -> "TiMoE":
        """Open a bundle: timoe.json and the router only; experts load when first eligible."""
        bundle_dir = Path(bundle_dir)
        path = bundle_dir / BUNDLE_FILENAME
        if not path.is_file():
            raise TimoeError(
                f"{bundle_dir} is not a TiMoE bundle (no {BUNDLE_FILENAME}): build one with "
                "`timoe train-router --experts RUNS --out DIR`"
            )
        try:
            spec = BundleSpec.model_validate(json.loads(read_small_file(path).decode("utf-8")))
        except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as exc:
            why = describe_validation_error(exc)
            raise TimoeError(f"{path} is corrupt ({why}): rebuild the bundle") from None
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
            )
            records.append(_ExpertRecord(info, candidates, e.weights_sha256, e.embedded))
        try:
            options = MixtureOptions.model_validate({**spec.options, "policy": spec.policy})
        except ValidationError as exc:
            first = str(exc).strip().splitlines()[0]
            raise TimoeError(f"{path} has invalid mixture options ({first})") from None
        router = None
        if spec.router is not None:
            router = Router(spec.router)
            state = _load_router_weights(bundle_dir, spec.router_sha256)
            check_state_matches(router, state, bundle_dir / ROUTER_FILENAME, BUNDLE_FILENAME,
                                "rebuild the bundle")
            check_weights_usable(state, bundle_dir / ROUTER_FILENAME, "rebuild the bundle")
            router.load_state_dict(state)
        if spec.strategy != "avg" and router is None:
            raise TimoeError(f"{path} says strategy {spec.strategy} but holds no router")
        return cls(records, strategy=spec.strategy, options=options, router=router, device=device)

    def save_bundle(self, out_dir: Path | str) -> None:
        """Write the bundle (see the module docstring); timoe.json is written last."""
        out_dir = Path(out_dir).resolve()
        embedded = {
            label for label, rec in self._records.items()
            if self.strategy == "coadapt" and (rec.embedded or label in self._adapted)
        }
        sources = {  # every expert's weights must be there before anything is written
            label: rec.weights_dir() for label, rec in self._records.items()
            if label not in embedded or label not in self._experts
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        specs = []
        for label, rec in self._records.items():
            embed = label in embedded
            if embed:
                target = out_dir / EMBEDDED_EXPERTS_DIR / label
                if label in self._experts:
                    save_model_weights(target, self._experts[label])
                else:
                    src = sources[label] / MODEL_FILENAME
                    if src.resolve() != (target / MODEL_FILENAME).resolve():
                        with atomic_path(target / MODEL_FILENAME) as tmp:
                            shutil.copyfile(src, tmp)
                write_run_info(target, rec.info)
                weights = target
            else:
                weights = sources[label]
            digest = sha256_file(weights / MODEL_FILENAME)
            if not embed and rec.sha256 is not None and digest != rec.sha256:
                raise TimoeError(
                    f"{weights / MODEL_FILENAME} changed since it was read (sha256 mismatch): "
                    "rebuild the bundle from the current run dirs"
                )
            rel = os.path.relpath(weights, out_dir)
            specs.append(
                ExpertSpec(
                    slice_label=label, start_date=rec.info.start_date, end_date=rec.info.end_date,
                    kind=rec.info.kind, path=rel, abs_path=str(weights), embedded=embed,
                    weights_sha256=digest, gpt_config=rec.info.model_config_,
                )
            )
        router_sha = None
        router = self.router_module
        if router is not None:
            router_sha = save_router_weights(out_dir, router)
        else:
            (out_dir / ROUTER_FILENAME).unlink(missing_ok=True)
        bundle = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "strategy": self.strategy,
            "policy": self.policy,
            "options": json.loads(self.options.model_dump_json()),
            "router": json.loads(router.config.model_dump_json()) if router else None,
            "router_sha256": router_sha,
            "tokenizer": dict(self.tokenizer),
            "experts": [json.loads(s.model_dump_json(by_alias=True)) for s in specs],
            "timoe_version": __version__,
        }
        atomic_write_json(out_dir / BUNDLE_FILENAME, bundle)
        for spec in specs:  # what the bundle now records
            rec = self._records[spec.slice_label]
            rec.sha256 = spec.weights_sha256
            if spec.embedded:
                rec.embedded, rec.candidates = True, [out_dir / spec.path]

    def as_average(self) -> "TiMoE":
        """The same experts combined by `avg` (no router); loaded experts are shared."""
        twin = TiMoE(list(self._records.values()), "avg", self.options, None, self.device)
        twin._experts = self._experts
        return twin

    # ------------------------------------------------------------- properties

    @property
    def strategy(self) -> str:
        return self._strategy

    @strategy.setter
    def strategy(self, value: str) -> None:
        if value not in STRATEGIES:
            raise TimoeError(f"unknown strategy {value!r}: use one of {', '.join(STRATEGIES)}")
        if value != "avg" and self.router is None:
            raise TimoeError(
                f"this mixture has no router, so strategy {value} is not available: train one "
                "with `timoe train-router --strategy learned-avg` (or `timoe coadapt`), or use avg"
            )
        self._strategy = value

    @property
    def policy(self) -> str:
        return self.options.policy

    @policy.setter
    def policy(self, value: str) -> None:
        if value not in POLICIES:
            raise TimoeError(
                f"unknown eligibility policy {value!r}: use one of {', '.join(POLICIES)}"
            )
        self.options.policy = value  # type: ignore[assignment]

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.slices]

    @property
    def run_infos(self) -> dict[str, RunInfo]:
        """label -> RunInfo of every expert (from run.json or timoe.json, no weights read)."""
        return {label: rec.info for label, rec in self._records.items()}

    @property
    def expert_dirs(self) -> dict[str, Path]:
        return {label: rec.candidates[0] for label, rec in self._records.items()}

    @property
    def expert_checksums(self) -> dict[str, str | None]:
        """label -> sha256 of the weights (None until read or saved)."""
        return {label: rec.sha256 for label, rec in self._records.items()}

    @property
    def tokenizer(self) -> dict[str, Any]:
        return dict(next(iter(self._records.values())).info.tokenizer)

    @property
    def vocab_size(self) -> int:
        return next(iter(self._records.values())).info.model_config_.vocab_size

    @property
    def block_size(self) -> int:
        """The longest context every expert accepts."""
        return min(r.info.model_config_.block_size for r in self._records.values())

    def to(self, *args: Any, **kwargs: Any) -> "TiMoE":
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            self.device = torch.device(device)
        return super().to(*args, **kwargs)

    def train(self, mode: bool = True) -> "TiMoE":
        """The router follows `mode`; experts stay in eval mode unless trainable."""
        self.training = mode
        if self.router is not None:
            self.router.train(mode)
        for label, m in self._experts.items():
            m.train(mode and label in self._trainable)
        return self

    # ----------------------------------------------------------------- experts

    def _record(self, time_slice: TimeSlice | str) -> _ExpertRecord:
        label = time_slice.label if isinstance(time_slice, TimeSlice) else str(time_slice)
        if label not in self._records:
            raise TimoeError(
                f"no expert for slice {label}: the experts are {', '.join(self.labels)}"
            )
        return self._records[label]

    def expert(self, time_slice: TimeSlice | str) -> GPT:
        """The expert of `time_slice`, loaded on first use (checksum verified) and cached."""
        rec = self._record(time_slice)
        if rec.label in self._experts:
            return self._experts[rec.label]  # type: ignore[return-value]
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
        model = load_weights_into(GPT(rec.info.model_config_), directory)
        trainable = rec.label in self._trainable
        model.requires_grad_(trainable)
        model.to(self.device).train(self.training and trainable)
        self._experts[rec.label] = model
        return model

    def loaded_experts(self) -> list[str]:
        """Labels of the experts loaded so far, in time order."""
        return [s.label for s in self.slices if s.label in self._experts]

    def set_trainable_experts(self, experts: Iterable[TimeSlice | str]) -> None:
        """Experts run with gradients (and requires_grad) from now on; the rest frozen.

        Under strategy coadapt they also count as adapted: `save_bundle` stores their
        weights inside the bundle.
        """
        labels = {self._record(e).label for e in experts}
        self._trainable = labels
        if self.strategy == "coadapt":
            self._adapted |= labels
        for label, m in self._experts.items():
            m.requires_grad_(label in labels)
        self.train(self.training)

    # ------------------------------------------------------------- eligibility

    def eligible_experts(self, query_date: QueryDate) -> list[TimeSlice]:
        """The experts usable as of `query_date` (TimoeError naming the first usable date)."""
        return eligible_slices(self.slices, query_date, self.policy)  # type: ignore[arg-type]

    def eligibility(self, query_dates: QueryDates, batch_size: int) -> torch.Tensor:
        """(B, K) bool: row b may use expert k. One date for all rows or one per row."""
        dates = _dates_per_row(query_dates, batch_size)
        mask = torch.zeros(batch_size, len(self.slices), dtype=torch.bool)
        index = {s: k for k, s in enumerate(self.slices)}
        for when in set(dates):
            cols = [index[s] for s in self.eligible_experts(when)]
            rows = [b for b, d in enumerate(dates) if d == when]
            mask[torch.tensor(rows).unsqueeze(1), torch.tensor(cols).unsqueeze(0)] = True
        return mask.to(self.device)

    # ----------------------------------------------------------------- weights

    @property
    def router_module(self) -> Router | None:
        """The Router itself, also when a trainer replaced `self.router` by a DDP wrapper
        (forward passes go through `self.router`, attributes are read from this)."""
        return getattr(self.router, "module", self.router)

    def _uses_router(self) -> bool:
        return self.strategy != "avg"

    def _log_weights(
        self, input_ids: torch.Tensor, eligible: torch.Tensor, state: RouterState | None = None
    ) -> tuple[torch.Tensor, RouterOutput | None]:
        """(B, T, K) log-weights (router) or (B, 1, K) (avg); -inf for excluded experts."""
        if self._uses_router():
            out = self.router(input_ids, eligible, state=state, top_k=self.options.top_k)
            return out.log_weights, out
        n = eligible.sum(1, keepdim=True).to(torch.float32)
        lw = torch.where(eligible, -torch.log(n), torch.full_like(n, float("-inf")))
        return lw.unsqueeze(1), None

    def _chunk(self) -> int:
        """Positions per vocab projection: about CHUNK_BYTES of fp32 logits."""
        if self.chunk_tokens:
            return self.chunk_tokens
        return max(MIN_CHUNK_TOKENS, CHUNK_BYTES // (4 * self.vocab_size))

    # ------------------------------------------------------ full distributions

    @torch.no_grad()
    def mixture_log_probs(self, input_ids: torch.Tensor, query_dates: QueryDates) -> torch.Tensor:
        """(B, T, V) fp32 next-token log-probs of the mixture, as of the date(s).

        Streamed expert by expert into one output tensor (see the module docstring).
        Inference only (no gradients): training uses `forward`.
        """
        ids = input_ids.to(self.device)
        B, T = ids.shape
        eligible = self.eligibility(query_dates, B)
        lw, _ = self._log_weights(ids, eligible)
        active = (eligible & torch.isfinite(lw).any(1)).cpu()  # top-k may drop an expert from a row
        # avg: equal weights, so add log(1/n) once at the end instead of once per expert.
        uniform = not self._uses_router()
        V = self.vocab_size
        out = torch.empty(B, T, V, dtype=torch.float32, device=self.device)
        written = [False] * B
        scratch: torch.Tensor | None = None
        for k, s in enumerate(self.slices):
            rows = active[:, k].nonzero().flatten().tolist()
            if not rows:
                continue
            expert = self.expert(s)
            h = expert.hidden_states(ids if len(rows) == B else ids[rows])  # (b_k, T, C)
            weight = expert.lm_head.weight
            for g0, g1, l0, accumulate in _runs(rows, written):
                dest = out[g0:g1].view(-1, V)
                hid = h[l0 : l0 + (g1 - g0)].reshape(-1, h.size(-1))
                a = None if uniform else lw[g0:g1, :, k].reshape(-1, 1)
                for p0, p1 in _chunks(dest.size(0), self._chunk()):
                    if accumulate:
                        if scratch is None or scratch.size(0) < p1 - p0:
                            # one chunk of logits, reused by every expert and chunk
                            scratch = torch.empty(p1 - p0, V, device=self.device)
                        buf = _project(hid[p0:p1], weight, scratch[: p1 - p0])
                    else:  # the row's first expert writes straight into the output
                        buf = _project(hid[p0:p1], weight, dest[p0:p1])
                    torch.log_softmax(buf, dim=-1, out=buf)  # in place, row by row
                    if a is not None:
                        buf.add_(a[p0:p1])
                    if accumulate:
                        torch.logaddexp(dest[p0:p1], buf, out=dest[p0:p1])
            for r in rows:
                written[r] = True
        if uniform:
            n = active.sum(1).tolist()
            for b in range(B):
                if n[b] > 1:
                    out[b].sub_(math.log(n[b]))
        return out

    # ----------------------------------------------------- target-only (training)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        query_dates: QueryDates,
        *,
        trainable: Iterable[TimeSlice | str] | None = None,
        cached_expert_log_probs: torch.Tensor | None = None,
    ) -> MixtureOutput:
        """Target-token log-probs of the mixture, (B, T), without any (B, T, V) mixture.

        trainable: experts run with gradients (default: `set_trainable_experts`); every
            other expert runs under no_grad. The router follows the global grad mode.
        cached_expert_log_probs: (B, T, K) log P_k(target) of frozen experts (from
            `experts_target_log_probs`, e.g. a disk cache); those experts are not run.
        Targets equal to -1 are ignored (their log-prob is 0).
        """
        ids = input_ids.to(self.device)
        tgt = targets.to(self.device)
        B, T = ids.shape
        eligible = self.eligibility(query_dates, B)
        lw, router_out = self._log_weights(ids, eligible)
        lw = lw.expand(B, T, -1)
        active = eligible & torch.isfinite(lw).any(1)
        train_set = (
            self._trainable if trainable is None else {self._record(e).label for e in trainable}
        )
        elp = self._experts_target(ids, tgt, active, train_set, cached_expert_log_probs)
        tlp = torch.logsumexp(lw + elp, dim=-1)
        aux = None
        if router_out is not None:
            o = self.options
            aux = self.router_module.aux_losses(
                router_out, o.entropy_coef, o.balance_coef, o.z_loss_coef, mask=tgt != -1
            )
        return MixtureOutput(tlp, lw, elp, eligible, router_out, aux)

    def mixture_target_log_probs(
        self, input_ids: torch.Tensor, targets: torch.Tensor, query_dates: QueryDates
    ) -> torch.Tensor:
        """log P_mix(targets[b, t] | input_ids[b, :t+1]) as (B, T) fp32."""
        return self.forward(input_ids, targets, query_dates).target_log_probs

    @torch.no_grad()
    def experts_target_log_probs(
        self, input_ids: torch.Tensor, targets: torch.Tensor, query_dates: QueryDates
    ) -> torch.Tensor:
        """(B, T, K) log P_k(target) of every eligible expert, -inf elsewhere (for caching)."""
        ids = input_ids.to(self.device)
        eligible = self.eligibility(query_dates, ids.size(0))
        return self._experts_target(ids, targets.to(self.device), eligible, set(), None)

    def _experts_target(
        self,
        ids: torch.Tensor,
        targets: torch.Tensor,
        active: torch.Tensor,
        trainable: set[str],
        cached: torch.Tensor | None,
    ) -> torch.Tensor:
        B, T = ids.shape
        cols = []
        for k, s in enumerate(self.slices):
            col = torch.full((B, T), float("-inf"), dtype=torch.float32, device=ids.device)
            rows = active[:, k]
            if rows.any():
                every = bool(rows.all())
                if cached is not None and s.label not in trainable:
                    vals = cached[..., k].to(device=ids.device, dtype=torch.float32)
                    col = torch.where(rows.unsqueeze(1), vals, col)
                else:
                    expert = self.expert(s)
                    grad = s.label in trainable and torch.is_grad_enabled()
                    with torch.set_grad_enabled(grad):
                        x = ids if every else ids[rows]
                        y = targets if every else targets[rows]
                        vals = _target_log_probs(expert, x, y, self._chunk())
                    col = vals if every else col.index_put((rows.nonzero().flatten(),), vals)
            cols.append(col)
        return torch.stack(cols, dim=-1)

    # -------------------------------------------------------------- generation

    @torch.no_grad()
    def next_log_probs(
        self,
        input_ids: torch.Tensor,
        query_dates: QueryDates | None = None,
        state: MixtureState | None = None,
        heads: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, MixtureState]:
        """(B, V) log-probs of the token after `input_ids`, and the state to continue.

        Without `state`, `input_ids` is the whole context (query_dates needed); with it,
        `input_ids` holds only the new tokens. Every eligible expert keeps a KV cache
        (top-k may silence an expert now and need it later), and only the last position
        is projected onto the vocabulary, by `heads[label]` when given (a generation
        makes them once with `GPT.decode_head`), else by the expert's `lm_head`.
        """
        ids = input_ids.to(self.device)
        B, T = ids.shape
        if state is None:
            state = MixtureState(eligible=self.eligibility(query_dates, B))
        lw, router_out = self._log_weights(ids, state.eligible, state.router)
        lw = lw[:, -1]  # (B, K)
        out = torch.full((B, self.vocab_size), float("-inf"), device=self.device)
        for k, s in enumerate(self.slices):
            rows = state.eligible[:, k]
            if not rows.any():
                continue
            every = bool(rows.all())
            expert = self.expert(s)
            cache = state.caches.setdefault(s.label, [])
            h = expert.hidden_states(ids if every else ids[rows], kv_cache=cache)[:, -1]
            head = heads[s.label] if heads is not None else expert.lm_head
            lp = torch.log_softmax(head(h).float(), dim=-1)
            lp += lw[rows, k].unsqueeze(1) if not every else lw[:, k].unsqueeze(1)
            if every:
                torch.logaddexp(out, lp, out=out)
            else:
                out[rows] = torch.logaddexp(out[rows], lp)
        return out, MixtureState(
            eligible=state.eligible,
            caches=state.caches,
            router=router_out.state if router_out is not None else None,
            length=state.length + T,
        )


# ------------------------------------------------------------------ helpers


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[0, n) cut into ceil(n / size) near-equal pieces (no small tail piece)."""
    pieces = max(1, -(-n // size))
    step = -(-n // pieces)
    return [(p, min(p + step, n)) for p in range(0, n, step)]


def _project(hidden: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """fp32 logits hidden @ weight.T, written into `out` when the dtypes allow it."""
    if (
        hidden.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled(hidden.device.type)
    ):
        return torch.mm(hidden, weight.t(), out=out)
    out.copy_(F.linear(hidden, weight).float())
    return out


def _target_log_probs(
    expert: GPT, ids: torch.Tensor, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """log P(targets) under one expert as (B, T), vocab projection done chunk by chunk."""
    h = expert.hidden_states(ids)
    B, T, C = h.shape
    flat_h, flat_t = h.reshape(-1, C), targets.reshape(-1)
    if not h.requires_grad:
        return _frozen_target_log_probs(expert, flat_h, flat_t, chunk).view(B, T)
    parts = []
    for p0, p1 in _chunks(flat_h.size(0), chunk):
        logits = expert.lm_head(flat_h[p0:p1]).float()
        parts.append(-F.cross_entropy(logits, flat_t[p0:p1], reduction="none", ignore_index=-1))
    return torch.cat(parts).view(B, T)


def _frozen_target_log_probs(
    expert: GPT, flat_h: torch.Tensor, flat_t: torch.Tensor, chunk: int
) -> torch.Tensor:
    """`_target_log_probs` without autograd (a frozen expert): each chunk's logits go into
    one reused buffer, log-softmax in place, then the targets are gathered; about half
    the memory traffic of cross_entropy, which writes a second vocab-sized tensor."""
    out = torch.empty(flat_t.shape, dtype=torch.float32, device=flat_h.device)
    ignored = flat_t == -1
    picked = flat_t.clamp_min(0).unsqueeze(1)
    pieces = _chunks(flat_h.size(0), chunk)
    scratch = torch.empty(pieces[0][1] - pieces[0][0], expert.lm_head.weight.size(0),
                          dtype=torch.float32, device=flat_h.device)
    for p0, p1 in pieces:
        buf = _project(flat_h[p0:p1], expert.lm_head.weight, scratch[: p1 - p0])
        torch.log_softmax(buf, dim=-1, out=buf)
        torch.gather(buf, 1, picked[p0:p1], out=out[p0:p1].unsqueeze(1))
    return out.masked_fill_(ignored, 0.0)


def _check_run_info_agrees(rec: _ExpertRecord, directory: Path) -> None:
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


def save_router_weights(directory: Path, router: Router) -> str:
    """`directory`/router.safetensors, atomically (a bundle or a training checkpoint);
    returns its sha256."""
    path = Path(directory) / ROUTER_FILENAME
    state = {k: v.detach().contiguous().cpu() for k, v in router.state_dict().items()}
    with atomic_path(path) as tmp:
        try:
            save_safetensors(state, tmp, metadata={"format": "pt", "timoe_version": __version__})
        except (SafetensorError, OSError) as exc:  # a full disk, as the OSError it is (exit 2)
            os_error = write_failure_as_os_error(exc, path)
            if os_error is None:
                raise
            raise os_error from None
    return sha256_file(path)


def load_router_weights(
    directory: Path, expected_sha: str | None = None
) -> dict[str, torch.Tensor]:
    """The state dict in `directory`/router.safetensors (checksum verified when given)."""
    return _load_router_weights(Path(directory), expected_sha)


def _load_router_weights(bundle_dir: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    path = bundle_dir / ROUTER_FILENAME
    if not path.is_file():
        raise TimoeError(f"{path} is missing: the bundle's router weights are gone; rebuild it")
    if expected_sha is not None and sha256_file(path) != expected_sha:
        raise TimoeError(f"{path} fails its checksum: the router was changed; rebuild the bundle")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TimoeError(f"{path} is corrupt ({exc}): rebuild the bundle") from None

