"""The interface of what `timoe evaluate` scores (`EvaluatedModel`) and its two kinds: one
GPT (a dense model or a single slice's expert, `SingleModel`) and a TiMoE mixture
(`MixtureModel`); evaluate/models.py loads them from a path. Every figure comes from
`target_log_probs`, as of the query date(s).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import torch

from timoe_core.errors import TimoeError
from timoe_core.model.gpt import GPT
from timoe_core.model.logprobs import target_log_probs
from timoe_core.model.mixture import TiMoE
from timoe_core.model.run_info import (
    METRICS_FILENAME,
    RUN_INFO_FILENAME,
    RunInfo,
    run_progress,
    unfinished_run_line,
)
from timoe_core.timeslices import AnswerCutoffs, parse_query_date

QueryDate = str | int | date
QueryDates = QueryDate | Sequence[QueryDate]


class EvaluatedModel:
    """Base of what `timoe evaluate` scores; see the module docstring."""

    name: str
    strategy: str
    policy: str
    block_size: int
    vocab_size: int  # rows of the embedding: every token id must be below it
    tokenizer: dict[str, Any]  # {"name", "vocab_size", "eot_token"} from run.json
    device: torch.device
    dated: bool  # False: the query date changes nothing (dense model, single expert)

    amp: bool = False  # bf16 autocast (CUDA only)

    def target_log_probs(
        self, input_ids: torch.Tensor, targets: torch.Tensor, query_dates: QueryDates | None
    ) -> torch.Tensor:
        """log P(targets[b, t] | input_ids[b, :t+1]) as float32 (B, T), as of the date(s)."""
        if self.amp and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self._target_log_probs(input_ids, targets, query_dates).float()
        return self._target_log_probs(input_ids, targets, query_dates)

    def _target_log_probs(self, input_ids, targets, query_dates) -> torch.Tensor:
        raise NotImplementedError

    def eligible_experts(self, query_date: QueryDate | None) -> list[str]:
        raise NotImplementedError

    def eligibility_key(self, query_date: QueryDate | None) -> tuple[str, ...]:
        return tuple(self.eligible_experts(query_date))

    def artefacts_used(self, query_date: QueryDate | None) -> list[dict[str, str]]:
        """[{name, data_cutoff}] of the trained artefacts an answer as of the date uses."""
        raise NotImplementedError

    @property
    def answer_cutoffs(self) -> AnswerCutoffs:
        """Which artefacts may answer, by cutoff (point_in_time.py); one set of weights: any."""
        return "any"

    def ineligibility(self, query_date: QueryDate) -> str | None:
        """None when some expert answers as of `query_date`, else the reason why none does."""
        try:
            self.eligible_experts(query_date)
        except TimoeError as exc:
            return str(exc)
        return None

    def loaded_experts(self) -> list[str]:
        raise NotImplementedError

    def newest_cutoff(self) -> date:
        """The latest data cutoff of any artefact behind its answers."""
        raise NotImplementedError

    def run_dirs(self) -> list[Path]:
        """The training run dirs its weights come from (none for a bundle's own copies)."""
        raise NotImplementedError


def model_warnings(model: EvaluatedModel, query_date: QueryDate | None) -> list[str]:
    """What a user should know before reading the model's figures, one line each: a run
    that has not finished training, a query date after all of the model's data."""
    out = []
    for d in model.run_dirs():
        progress = run_progress(d)
        if progress is not None and not progress.finished:
            out.append(unfinished_run_line(d, progress) + "; its figures are those of step "
                       f"{progress.step}")
    if query_date is not None and model.dated:
        when, newest = parse_query_date(query_date), model.newest_cutoff()
        if when > newest:
            out.append(f"query date {when.isoformat()} is after the newest data of this model "
                       f"({newest.isoformat()}): it answers as of {newest.isoformat()}, with "
                       "every expert")
    return out


class SingleModel(EvaluatedModel):
    """One GPT: a dense model or a single slice's expert. Query dates are ignored."""

    dated = False

    def __init__(
        self, gpt: GPT, info: RunInfo, *, strategy: str, name: str, policy: str = "inclusive",
        run_dir: Path | None = None,
    ) -> None:
        self.gpt = gpt.eval()
        self.info = info
        self.run_dir = run_dir
        self.strategy = strategy
        self.name = name
        self.policy = policy
        self.block_size = gpt.config.block_size
        self.vocab_size = gpt.config.vocab_size
        self.tokenizer = dict(info.tokenizer)
        self.device = next(gpt.parameters()).device

    @property
    def label(self) -> str:
        if self.info.kind == "dense":
            return f"dense {self.info.slice_label}"
        return self.info.slice_label

    def _target_log_probs(self, input_ids, targets, query_dates=None):
        return target_log_probs(self.gpt, input_ids, targets)

    def eligible_experts(self, query_date=None):
        if query_date is not None:
            parse_query_date(query_date)  # still refuse a malformed date
        return [self.label]

    def loaded_experts(self):
        return [self.label]

    def artefacts_used(self, query_date=None):
        return [{"name": self.label, "data_cutoff": self.info.cutoff.isoformat()}]

    def newest_cutoff(self):
        return self.info.cutoff

    def run_dirs(self):
        return [self.run_dir] if self.run_dir is not None else []


class MixtureModel(EvaluatedModel):
    """A TiMoE mixture: experts after the query date are excluded, never loaded."""

    dated = True

    def __init__(self, mix: TiMoE, *, name: str) -> None:
        self.mix = mix.eval()
        self.name = name
        self.strategy = mix.strategy
        self.policy = mix.policy
        self.tokenizer = dict(mix.tokenizer)
        self.block_size = mix.block_size
        self.vocab_size = mix.vocab_size
        self.device = torch.device(mix.device)

    def _target_log_probs(self, input_ids, targets, query_dates):
        if query_dates is None:
            raise TimoeError("a TiMoE mixture needs a query date for every document")
        return self.mix.mixture_target_log_probs(input_ids, targets, query_dates)

    def eligible_experts(self, query_date=None):
        if query_date is None:  # each document's own date: every expert may answer some
            return [s.label for s in sorted(self.mix.slices)]
        return [s.label for s in self.mix.eligible_experts(parse_query_date(query_date))]

    def eligibility_key(self, query_date):
        return self.mix.selection_key(parse_query_date(query_date))

    def artefacts_used(self, query_date=None):
        return self.mix.artefacts_used(parse_query_date(query_date))

    @property
    def answer_cutoffs(self) -> AnswerCutoffs:
        return self.mix.answer_cutoffs

    def ineligibility(self, query_date):
        # Some artefact is usable exactly from the first usable date on (every policy).
        first = self.mix.first_usable_date()
        if parse_query_date(query_date) < first:
            return f"no expert before {first.isoformat()} (policy {self.policy})"
        return None

    def loaded_experts(self):
        return list(self.mix.loaded_experts())

    def newest_cutoff(self):
        return max(r.cutoff for r in self.mix.artefacts)

    def run_dirs(self):
        # a run dir's final weights (snapshots are folders inside it); a bundle's copies
        # of adapted experts have no run of their own
        return sorted({c for r in self.mix.artefacts for c in r.candidates
                       if (c / RUN_INFO_FILENAME).is_file() and (c / METRICS_FILENAME).is_file()})
