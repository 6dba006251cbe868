"""TiMoE: time-slice experts combined in log-probability space.

For a query date d, eligible experts E(d) and weights w_k summing to 1 over E(d):

    log P(x_{t+1} | x_{1..t})
        = logsumexp_{k in E(d)} ( log w_k(x_{1..t}) + log P_k(x_{t+1} | x_{1..t}) )

The formula is `add_to_mixture` below: one expert's term folded into the running
logsumexp. Every path calls it, expert by expert: the full distribution
(`mixture_log_probs`), the target-only one for training and evaluation (`forward`) and
decoding (`decoding.mixture_next_log_probs`). The weights come from the strategy's weighting
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
- Generation (model/decoding.py): `mixture_next_log_probs` keeps a KV cache per eligible expert and the router's
  running prefix sum, and projects only the last position onto the vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
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
from timoe_core.model.gpt import GPT
from timoe_core.model.logprobs import add_to_mixture
from timoe_core.model.mixture_compute import MixtureComputation, MixtureOutput
from timoe_core.model.mixture_views import MixtureViews
from timoe_core.model.point_in_time import POLICIES, Policy
from timoe_core.model.router import (
    Router,
    RouterConfig,
    RouterSnapshot,
)
from timoe_core.model.run_info import RunInfo
from timoe_core.model.weighting import get_strategy
from timoe_core.timeslices import AnswerCutoffs, TimeSlice

QueryDate = str | int | date
QueryDates = QueryDate | Sequence[QueryDate] | torch.Tensor | np.ndarray


# ---------------------------------------------------------------------- TiMoE


class TiMoE(MixtureViews, MixtureComputation, nn.Module):
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
        # Only artefacts whose cutoff is such a period end answer (point_in_time.py).
        self.answer_cutoffs: AnswerCutoffs = "any"  # see point_in_time.py
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
        router_cutoff = b.router_data_cutoff
        if (b.router is not None and not b.router_snapshots and router_cutoff is None
                and point_in_time.canonical_policy(b.options.policy) == "inclusive"):
            # trained over every year before routers recorded a cutoff: it read at least
            # its experts' text
            router_cutoff = max(r.cutoff for r in b.records)
        return cls(b.records, strategy=b.strategy, options=b.options, router=b.router,
                   device=device, router_snapshots=b.router_snapshots,
                   router_data_cutoff=router_cutoff)

    def save_bundle(self, out_dir: Path | str) -> None:
        """Write the bundle (`bundle.py`); timoe.json is written last. Under an
        expert-adapting strategy the adapted experts are stored inside it."""
        adapts = get_strategy(self.strategy).adapts_experts
        embedded = {
            rec.key for rec in self._all
            if adapts and (rec.embedded or (rec is self._records[rec.label]
                                            and rec.label in self._adapted))
        }
        loaded = {self._records[label].key: cast(GPT, m) for label, m in self._experts.items()}
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
    def policy(self) -> Policy:
        return self.options.policy

    @policy.setter
    def policy(self, value: str) -> None:
        for policy in POLICIES:
            if value == policy:
                self.options.policy = policy
                return
        raise TimoeError(
            f"unknown eligibility policy {value!r}: use one of {', '.join(POLICIES)}"
        )

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
        return {label: rec.info if rec.data_cutoff is None else rec.info.at_cutoff(rec.cutoff)
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


    def record_training_cutoff(self, cutoff: date) -> None:
        """After training one router over every year (not staged): the router, and every
        expert adapted with it, have read text up to `cutoff` (the data's last year and
        every expert the loss went through)."""
        if self.router is not None:
            self.router_data_cutoff = cutoff
        for label in self._adapted:
            self._records[label].data_cutoff = cutoff


__all__ = ["MixtureOutput", "QueryDate", "QueryDates", "TiMoE", "add_to_mixture"]
