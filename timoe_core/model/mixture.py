"""TiMoE: time-slice experts combined in log-probability space.

For a query date d, eligible experts E(d) and weights w_k summing to 1 over E(d):

    log P(x_{t+1} | x_{1..t})
        = logsumexp_{k in E(d)} ( log w_k(x_{1..t}) + log P_k(x_{t+1} | x_{1..t}) )

The formula is `add_to_mixture` below: one expert's term folded into the running
logsumexp. Every path calls it, expert by expert: the full distribution
(`mixture_log_probs`), the target-only one for training and evaluation (`forward`) and
decoding (`next_log_probs`). The weights come from the strategy's weighting
(`timoe_core.model.weighting`: uniform over E(d), or the causal router); the experts are
records loaded lazily with their checksums verified (`expert_pool.py`); the bundle
files are `bundle.py`.

Invariants kept here, each tested in tests/test_mixture.py:
- causal validity: only experts eligible for a row are loaded and run, and only on that
  row; an ineligible expert's weights or files are never read for that query;
- proper distribution: ineligible experts are excluded (log-weight -inf), never zeroed;
- causal in the sequence: experts are causal decoders, the router pools a prefix mean;
- eligibility by date and data cutoff: `point_in_time.select_artefacts` (point-in-time,
  inclusive), never by index; a staged mixture answers a date through `as_of`.

Cost model:
- `mixture_log_probs` streams expert by expert: each eligible expert's final hidden
  states, then its vocab projection in chunks of positions, log-softmax in place, folded
  into one (B, T, V) output in place. Peak memory is the output, one chunk and one
  expert's activations, whatever the number of experts; nothing of shape
  (experts, B, T, V) is ever built.
- `forward` / `mixture_target_log_probs` (training and evaluation) never build a
  vocab-sized mixture: each expert gives only log P_k(target) (B, T), computed chunk by
  chunk, folded over the experts.
- Training hooks: `set_trainable_experts` / `forward(trainable=...)` run the named
  experts with gradients and every other expert under no_grad; `cached_expert_log_probs`
  skips frozen experts entirely (their target log-probs read from a cache, see
  `experts_target_log_probs`); `router_aux` carries the auxiliary losses.
- Generation: `next_log_probs` keeps a KV cache per eligible expert and the router's
  running prefix sum, and projects only the last position onto the vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from timoe_core.config import MixtureOptions
from timoe_core.errors import TimoeError
from timoe_core.model import bundle, point_in_time
from timoe_core.model.expert_pool import (
    ExpertRecord,
    check_compatible,
    load_expert,
    records_from_run_dirs,
)
from timoe_core.model.gpt import GPT, KVCache
from timoe_core.model.point_in_time import POLICIES
from timoe_core.model.router import (
    Router,
    RouterAux,
    RouterConfig,
    RouterOutput,
    RouterSnapshot,
    RouterState,
)
from timoe_core.model.run_info import RunInfo
from timoe_core.model.weighting import get_strategy
from timoe_core.timeslices import TimeSlice, parse_query_date

# One chunk of vocab-sized log-probs (positions x vocab x 4 bytes) is about this big.
CHUNK_BYTES = 32 << 20
MIN_CHUNK_TOKENS = 64

QueryDate = str | int | date
QueryDates = QueryDate | Sequence[QueryDate] | torch.Tensor | np.ndarray


# ------------------------------------------------------------------ internals


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


# ---------------------------------------------------------------------- TiMoE


class TiMoE(nn.Module):
    """A time-aware mixture of GPT experts; see the module docstring."""

    def __init__(
        self,
        experts: list[ExpertRecord],
        strategy: str = "avg",
        options: MixtureOptions | None = None,
        router: Router | None = None,
        device: str | torch.device = "cpu",
        router_snapshots: Sequence[RouterSnapshot] = (),
        router_data_cutoff: date | None = None,
        shared: dict[str, GPT] | None = None,
    ) -> None:
        super().__init__()
        if not experts:
            raise TimoeError("a mixture needs at least one expert")
        check_compatible(experts)
        # Every artefact (a slice's final expert, its snapshots, adapted experts), in
        # (slice, cutoff, generation) order; _records: the final one of each slice.
        self._all: list[ExpertRecord] = sorted(experts, key=lambda r: (r.time_slice, r.order))
        self._records: dict[str, ExpertRecord] = {r.label: r for r in self._all}
        self._router_snapshots = sorted(router_snapshots, key=lambda r: r.data_cutoff)
        self.router_data_cutoff = router_data_cutoff
        # Staged: an answer as of d is computed by `as_of(d)`, a mixture of exactly the
        # artefacts usable as of d (and the router snapshot of d). A mixture with one
        # global router over final experts (not staged) computes as it always did.
        self.staged = bool(self._router_snapshots) or (
            router is None and len(self._all) > len(self._records)
        )
        self._pool = self._all if self.staged else list(self._records.values())
        self._shared: dict[str, GPT] = {} if shared is None else shared  # artefact key -> GPT
        self._views: dict[tuple[str, ...], TiMoE] = {}
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
    ) -> TiMoE:
        """A mixture over expert run dirs (or one folder whose sub-folders are run dirs).

        avg reads run.json files only. learned-avg / coadapt get a fresh router (output
        layer zero: it starts equal to avg) whose token table is seeded from the earliest
        expert's embeddings, which loads that expert.
        """
        if isinstance(expert_dirs, (str, Path)):
            expert_dirs = [expert_dirs]
        options = options or MixtureOptions()
        records = records_from_run_dirs(expert_dirs)
        router = None
        if get_strategy(strategy).uses_router:
            # One slot per slice, however many artefacts (snapshots) each slice holds.
            slices = sorted({r.time_slice for r in records})
            router = Router(
                RouterConfig(
                    slice_labels=[s.label for s in slices],
                    vocab_size=records[0].info.model_config_.vocab_size,
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
    def from_bundle(cls, bundle_dir: Path | str, device: str | torch.device = "cpu") -> TiMoE:
        """Open a bundle: timoe.json and the router only; experts load when first eligible."""
        b = bundle.read_bundle(bundle_dir)
        return cls(b.records, strategy=b.strategy, options=b.options, router=b.router,
                   device=device, router_snapshots=b.router_snapshots,
                   router_data_cutoff=b.router_data_cutoff)

    def save_bundle(self, out_dir: Path | str) -> None:
        """Write the bundle (`bundle.py`); timoe.json is written last. Under an
        expert-adapting strategy the adapted experts are stored inside it."""
        adapts = get_strategy(self.strategy).adapts_experts
        embedded = {
            rec.key for rec in self._all
            if adapts and (rec.embedded or (rec is self._records[rec.label]
                                            and rec.label in self._adapted))
        }
        loaded = {self._records[label].key: m for label, m in self._experts.items()}
        bundle.write_bundle(out_dir, self._all, loaded, embedded, self.strategy, self.options,
                            self.router, self._router_snapshots, self.router_data_cutoff)

    def as_average(self) -> TiMoE:
        """The same experts combined by `avg` (no router); loaded experts are shared."""
        twin = TiMoE(list(self._all), "avg", self.options, None, self.device,
                     shared=self._shared)
        twin._experts = self._experts
        return twin

    # ------------------------------------------------------------- properties

    @property
    def strategy(self) -> str:
        return self._strategy

    @strategy.setter
    def strategy(self, value: str) -> None:
        if get_strategy(value).uses_router and self.router is None:
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

    def uncovered_years(self) -> list[str]:
        """Years between the experts' slices that no expert covers ("2017" or "2017-2018")."""
        return [
            f"{a.end_year + 1}-{b.start_year - 1}"
            if b.start_year - a.end_year > 2
            else str(a.end_year + 1)
            for a, b in zip(self.slices, self.slices[1:])
            if b.start_year > a.end_year + 1
        ]

    @property
    def artefacts(self) -> list[ExpertRecord]:
        """Every artefact of the mixture (finals, snapshots, adapted), in slice and
        cutoff order."""
        return list(self._all)

    @property
    def name(self) -> str:
        return f"experts ({', '.join(self.labels)})"

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.slices]

    @property
    def run_infos(self) -> dict[str, RunInfo]:
        """label -> RunInfo of every expert (from run.json or timoe.json, no weights read),
        with the data cutoff of the artefact this mixture holds for the slice."""
        return {label: rec.info if rec.data_cutoff is None else rec.info.model_copy(
                    update={"data_cutoff": rec.cutoff.isoformat(), "snapshots": []})
                for label, rec in self._records.items()}

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

    def to(self, *args: Any, **kwargs: Any) -> TiMoE:
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            self.device = torch.device(device)
        return super().to(*args, **kwargs)

    def train(self, mode: bool = True) -> TiMoE:
        """The router follows `mode`; experts stay in eval mode unless trainable."""
        self.training = mode
        if self.router is not None:
            self.router.train(mode)
        for label, m in self._experts.items():
            m.train(mode and label in self._trainable)
        return self

    # ----------------------------------------------------------------- experts

    def _record(self, time_slice: TimeSlice | str) -> ExpertRecord:
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
        model = self._shared.get(rec.key) or load_expert(rec)
        self._shared[rec.key] = model
        trainable = rec.label in self._trainable
        model.requires_grad_(trainable)
        model.to(self.device).train(self.training and trainable)
        self._experts[rec.label] = model
        return model

    def loaded_experts(self) -> list[str]:
        """Labels of the experts loaded so far (any artefact of theirs), in time order."""
        loaded = {r.label for r in self._all if r.key in self._shared} | set(self._experts)
        return [s.label for s in self.slices if s.label in loaded]

    def set_trainable_experts(self, experts: Iterable[TimeSlice | str]) -> None:
        """Experts run with gradients (and requires_grad) from now on; the rest frozen.

        Under a strategy that adapts experts (coadapt) they also count as adapted:
        `save_bundle` stores their weights inside the bundle.
        """
        labels = {self._record(e).label for e in experts}
        self._trainable = labels
        if get_strategy(self.strategy).adapts_experts:
            self._adapted |= labels
        for label, m in self._experts.items():
            m.requires_grad_(label in labels)
        self.train(self.training)

    # ------------------------------------------------------------- eligibility

    def eligible_experts(self, query_date: QueryDate) -> list[TimeSlice]:
        """The experts usable as of `query_date` (TimoeError naming the first usable date)."""
        return [r.time_slice for r in self.usable_artefacts(query_date)]

    def usable_artefacts(self, query_date: QueryDate) -> list[ExpertRecord]:
        """The artefacts an answer as of `query_date` uses, one per slice at most
        (`point_in_time.select_artefacts`); TimoeError naming the first usable date."""
        when = parse_query_date(query_date)
        chosen = point_in_time.select_artefacts(self._pool, when, self.policy)
        if not chosen:
            raise point_in_time.none_usable(when, self.policy, self.first_usable_date())
        return chosen

    def first_usable_date(self) -> date:
        return point_in_time.first_usable_date(self._pool, self.policy)

    def router_for(self, query_date: QueryDate) -> RouterSnapshot | None:
        """The router snapshot an answer as of `query_date` uses (staged routers):
        point-in-time: the one with the largest cutoff on or before the date; inclusive:
        the latest one over exactly the slices that answer."""
        if not self._router_snapshots or not self._uses_router():
            return None
        when = parse_query_date(query_date)
        labels = ([r.label for r in self.usable_artefacts(when)]
                  if point_in_time.canonical_policy(self.policy) == "inclusive" else [])
        snapshot = point_in_time.router_snapshot_for(self._router_snapshots, when, self.policy,
                                                     labels)
        if snapshot is None:
            raise TimoeError(
                f"no router snapshot of this bundle answers as of {when.isoformat()} "
                f"(policy {self.policy}): its routers start at "
                f"{self._router_snapshots[0].data_cutoff.isoformat()}"
            )
        return snapshot

    def selection_key(self, query_date: QueryDate) -> tuple[str, ...]:
        """Names of the artefacts used as of the date: equal keys, bitwise equal answers."""
        snap = self.router_for(query_date) if self.staged else None
        keys = tuple(r.key for r in self.usable_artefacts(query_date))
        return keys + ((snap.name,) if snap is not None else ())

    def artefacts_used(self, query_date: QueryDate) -> list[dict[str, str]]:
        """[{name, data_cutoff}] of every artefact an answer as of the date depends on."""
        out = [{"name": r.key, "data_cutoff": r.cutoff.isoformat()}
               for r in self.usable_artefacts(query_date)]
        if self._uses_router():
            snap = self.router_for(query_date) if self.staged else None
            if snap is not None:
                out.append({"name": snap.name, "data_cutoff": snap.data_cutoff.isoformat()})
            elif self.router is not None:
                cutoff = self.router_data_cutoff or max(r.cutoff for r in self._records.values())
                out.append({"name": "router", "data_cutoff": cutoff.isoformat()})
        return out

    def as_of(self, query_date: QueryDate) -> TiMoE:
        """The mixture that answers as of `query_date`: exactly the usable artefacts (one
        per slice) and, with a staged router, its snapshot for that date. Nothing of a
        later artefact is in it, so its outputs cannot depend on one. A mixture that is
        not staged is its own answer."""
        if not self.staged:
            return self
        key = self.selection_key(query_date)
        view = self._views.get(key)
        if view is None:
            snap = self.router_for(query_date)
            router = snap.router if snap is not None else None
            strategy = self.strategy if router is not None or not self._uses_router() else "avg"
            view = TiMoE(self.usable_artefacts(query_date), strategy, self.options, router,
                         self.device, shared=self._shared)
            view.chunk_tokens = self.chunk_tokens
            view.eval()
            self._views[key] = view
        return view

    def _by_view(self, query_dates: QueryDates, batch_size: int) -> list[tuple[TiMoE, list[int], date]]:
        """Rows grouped by the mixture that answers them (a staged mixture's as_of)."""
        dates = _dates_per_row(query_dates, batch_size)
        groups: dict[tuple[str, ...], tuple[TiMoE, list[int], date]] = {}
        for b, when in enumerate(dates):
            key = self.selection_key(when)
            if key not in groups:
                groups[key] = (self.as_of(when), [], when)
            groups[key][1].append(b)
        return list(groups.values())

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

    def _uses_router(self) -> bool:
        return get_strategy(self.strategy).uses_router

    def _log_weights(
        self,
        input_ids: torch.Tensor,
        eligible: torch.Tensor,
        state: RouterState | None = None,
        router: nn.Module | None = None,
    ) -> tuple[torch.Tensor, RouterOutput | None]:
        """(B, T, K) log-weights (router) or (B, 1, K) (uniform); -inf for excluded experts.

        router: what to call instead of `self.router` (a trainer's DDP/compiled wrapper
        of it, so that gradients are synchronised)."""
        if self._uses_router():
            call = router if router is not None else self.router
            out = call(input_ids, eligible, state=state, top_k=self.options.top_k)
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
        if self.staged:
            return self._gather_views(ids, None, query_dates, lambda v, x, _, d:
                                      v.mixture_log_probs(x, d), (B, T, self.vocab_size))
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
                    add_to_mixture(dest[p0:p1] if accumulate else None, buf,
                               None if a is None else a[p0:p1], inplace=True)
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
        router: nn.Module | None = None,
    ) -> MixtureOutput:
        """Target-token log-probs of the mixture, (B, T), without any (B, T, V) mixture.

        trainable: experts run with gradients (default: `set_trainable_experts`); every
            other expert runs under no_grad. The router follows the global grad mode.
        cached_expert_log_probs: (B, T, K) log P_k(target) of frozen experts (from
            `experts_target_log_probs`, e.g. a disk cache); those experts are not run.
        router: the module computing the weights in place of `self.router` (a trainer's
            DDP/compiled wrapper of it).
        Targets equal to -1 are ignored (their log-prob is 0).
        """
        ids = input_ids.to(self.device)
        tgt = targets.to(self.device)
        B, T = ids.shape
        eligible = self.eligibility(query_dates, B)
        lw, router_out = self._log_weights(ids, eligible, router=router)
        lw = lw.expand(B, T, -1)
        active = eligible & torch.isfinite(lw).any(1)
        train_set = (
            self._trainable if trainable is None else {self._record(e).label for e in trainable}
        )
        elp = self._experts_target(ids, tgt, active, train_set, cached_expert_log_probs)
        tlp = add_to_mixture(None, elp, lw, experts_dim=-1)
        aux = None
        if router_out is not None:
            o = self.options
            aux = self.router.aux_losses(
                router_out, o.entropy_coef, o.balance_coef, o.z_loss_coef, mask=tgt != -1
            )
        return MixtureOutput(tlp, lw, elp, eligible, router_out, aux)

    def mixture_target_log_probs(
        self, input_ids: torch.Tensor, targets: torch.Tensor, query_dates: QueryDates
    ) -> torch.Tensor:
        """log P_mix(targets[b, t] | input_ids[b, :t+1]) as (B, T) fp32."""
        if self.staged:
            return self._gather_views(input_ids, targets, query_dates, lambda v, x, y, d:
                                      v.forward(x, y, d).target_log_probs, tuple(targets.shape))
        return self.forward(input_ids, targets, query_dates).target_log_probs

    def _gather_views(self, ids: torch.Tensor, targets: torch.Tensor | None,
                      query_dates: QueryDates, run: Callable[..., torch.Tensor],
                      shape: tuple[int, ...]) -> torch.Tensor:
        """`run(view, ids, targets, date)` for each group of rows of one answering
        mixture, put back in row order."""
        groups = self._by_view(query_dates, ids.size(0))
        if len(groups) == 1:
            view, _, when = groups[0]
            return run(view, ids, targets, when)
        out = torch.empty(shape, dtype=torch.float32, device=self.device)
        for view, rows, when in groups:
            idx = torch.tensor(rows, device=ids.device)
            out[idx.to(self.device)] = run(view, ids[idx], None if targets is None
                                           else targets[idx], when)
        return out

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
    ) -> tuple[torch.Tensor, MixtureState]:
        """(B, V) log-probs of the token after `input_ids`, and the state to continue.

        Without `state`, `input_ids` is the whole context (query_dates needed); with it,
        `input_ids` holds only the new tokens. Every eligible expert keeps a KV cache
        (top-k may silence an expert now and need it later), and only the last position
        is projected onto the vocabulary.
        """
        ids = input_ids.to(self.device)
        B, T = ids.shape
        if state is None:
            state = MixtureState(eligible=self.eligibility(query_dates, B))
        lw, router_out = self._log_weights(ids, state.eligible, state.router)
        lw = lw[:, -1]  # (B, K)
        def nothing_folded() -> torch.Tensor:
            return torch.full((B, self.vocab_size), float("-inf"), device=self.device)

        out = None  # the first expert's term starts the sum (no -inf tensor to fold into)
        for k, s in enumerate(self.slices):
            rows = state.eligible[:, k]
            if not rows.any():
                continue
            every = bool(rows.all())
            expert = self.expert(s)
            cache = state.caches.setdefault(s.label, [])
            h = expert.hidden_states(ids if every else ids[rows], kv_cache=cache)[:, -1]
            lp = torch.log_softmax(expert.lm_head(h).float(), dim=-1)
            if every:
                out = add_to_mixture(out, lp, lw[:, k].unsqueeze(1), inplace=True)
            else:
                if out is None:
                    out = nothing_folded()
                out[rows] = add_to_mixture(out[rows], lp, lw[rows, k].unsqueeze(1), inplace=True)
        if out is None:  # no row has an eligible expert
            out = nothing_folded()
        return out, MixtureState(
            eligible=state.eligible,
            caches=state.caches,
            router=router_out.state if router_out is not None else None,
            length=state.length + T,
        )


# ------------------------------------------------------------------ the formula


def add_to_mixture(
    total: torch.Tensor | None,
    expert_log_probs: torch.Tensor,
    log_weight: torch.Tensor | None = None,
    *,
    experts_dim: int | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """The mixture formula: experts' terms folded into the running log-probability,

        total <- log( exp(total) + sum_k w_k * P_k )
               = logaddexp(total, logsumexp_k (log w_k + log P_k))

    so that folding every eligible expert in gives logsumexp_k (log w_k + log P_k).

    total None: nothing folded yet (the result is the terms' logsumexp).
    log_weight None: the caller applies the weights (uniform ones: log(1/n) once at the
        end, instead of once per expert).
    experts_dim: the terms hold several experts along this dim (the target-only path:
        (B, T, K)), folded at once; None: one expert's term.
    inplace: one expert's vocab-sized term is computed in `expert_log_probs` and the sum
        written into `total` (inference; no second vocab-sized tensor).
    """
    if log_weight is None:
        term = expert_log_probs
    elif inplace:
        term = expert_log_probs.add_(log_weight)
    else:
        term = expert_log_probs + log_weight
    if experts_dim is not None:
        term = torch.logsumexp(term, dim=experts_dim)
    if total is None:
        return term
    if inplace:
        return torch.logaddexp(total, term, out=total)
    return torch.logaddexp(total, term)


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
