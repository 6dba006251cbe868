"""TiMoE's views by date: which artefacts and router snapshot answer as of a date (through
the point-in-time rule, model/point_in_time.py), the mixture of exactly those
(`as_of`), and the grouping of a batch's rows by the artefacts they use."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from timoe_core.errors import TimoeError
from timoe_core.model import point_in_time
from timoe_core.model.expert_pool import ExpertRecord
from timoe_core.model.router import RouterSnapshot
from timoe_core.timeslices import AnswerCutoffs, TimeSlice, parse_query_date

if TYPE_CHECKING:
    from timoe_core.config import MixtureOptions
    from timoe_core.model.mixture import QueryDate, QueryDates, TiMoE
    from timoe_core.model.point_in_time import Policy
    from timoe_core.model.router import Router


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


class MixtureViews:
    """The eligibility part of `TiMoE` (a mixin: TiMoE holds the state)."""

    # TiMoE's state this part reads (declared for the type checker only).
    options: MixtureOptions
    router: Router | None
    router_data_cutoff: date | None
    slices: list[TimeSlice]
    device: torch.device
    chunk_tokens: int | None
    answer_cutoffs: AnswerCutoffs
    staged: bool
    _records: dict[str, ExpertRecord]
    _router_snapshots: list[RouterSnapshot]
    _pool: list[ExpertRecord]
    _views: dict[tuple[str, ...], TiMoE]

    if TYPE_CHECKING:
        @property
        def policy(self) -> Policy: ...

        @property
        def strategy(self) -> str: ...

        def _uses_router(self) -> bool: ...

    def eligible_experts(self, query_date: QueryDate) -> list[TimeSlice]:
        """The experts usable as of `query_date` (TimoeError naming the first usable date)."""
        return [r.time_slice for r in self.usable_artefacts(query_date)]

    def usable_artefacts(self, query_date: QueryDate) -> list[ExpertRecord]:
        """The artefacts an answer as of `query_date` uses, one per slice at most
        (`point_in_time.select_artefacts`); TimoeError naming the first usable date."""
        when = parse_query_date(query_date)
        self._check_single_router(when)
        chosen = point_in_time.select_artefacts(self._pool, when, self.policy,
                                                self.answer_cutoffs)
        if not chosen:
            raise point_in_time.none_usable(when, self.policy, self.first_usable_date())
        return chosen

    def first_usable_date(self) -> date:
        first = point_in_time.first_usable_date(self._pool, self.policy, self.answer_cutoffs)
        cutoff = self._single_router_cutoff()
        return first if cutoff is None else max(first, cutoff)

    def _single_router_cutoff(self) -> date | None:
        """The data cutoff of a single router (trained over every year, not staged) that
        the point-in-time rule must respect; None when there is none to respect."""
        if (self.staged or self.router is None or not self._uses_router()
                or point_in_time.canonical_policy(self.policy) == "inclusive"):
            return None
        return self.router_data_cutoff

    def _check_single_router(self, when: date) -> None:
        """Point-in-time never uses an artefact with a later cutoff, a router included: one
        router fitted on every year (--policy inclusive) answers no date before its cutoff."""
        cutoff = self._single_router_cutoff()
        if cutoff is not None and when < cutoff:
            raise TimoeError(
                f"this {self.strategy} mixture's router was trained on text up to "
                f"{cutoff.isoformat()} (one router over every year, --policy inclusive), so "
                f"under policy {self.policy} it cannot answer as of {when.isoformat()}: use "
                f"--policy inclusive or --strategy avg, or train a staged router (the default "
                f"--policy point-in-time of `timoe train-router` and `timoe coadapt`)"
            )

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
                                                     labels, self.answer_cutoffs)
        if snapshot is not None and self.answer_cutoffs != "any" and (
                snapshot.slice_labels != [r.label for r in self.usable_artefacts(when)]):
            raise TimoeError(
                f"as of {when.isoformat()} with --answer-cutoffs {self.answer_cutoffs}, the "
                f"router snapshot {snapshot.name} is over {', '.join(snapshot.slice_labels)} "
                f"but the experts usable then are other slices: this bundle has no "
                f"{self.answer_cutoffs}-end router for them; use --answer-cutoffs any"
            )
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
        mix = cast("TiMoE", self)  # the mixin's object is a TiMoE
        if not mix.staged:
            return mix
        key = mix.selection_key(query_date)
        view = mix._views.get(key)
        if view is None:
            snap = mix.router_for(query_date)
            router = snap.router if snap is not None else None
            strategy = mix.strategy if router is not None or not mix._uses_router() else "avg"
            view = type(mix)(mix.usable_artefacts(query_date), strategy, mix.options, router,
                             mix.device, shared=mix._shared)
            view.answer_cutoffs = mix.answer_cutoffs
            view.chunk_tokens = mix.chunk_tokens
            view.eval()
            mix._views[key] = view
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

