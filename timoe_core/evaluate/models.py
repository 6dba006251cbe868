"""What is evaluated: one interface over a TiMoE bundle, a single expert and a dense model.

`load_evaluated_model(path, strategy)` reads what `path` is (a bundle with timoe.json, a
run dir with run.json, or a folder of expert run dirs) and returns an `EvaluatedModel`:

    target_log_probs(input_ids, targets, query_dates) -> (B, T) log P(target)
    eligible_experts(query_date) -> labels of the experts that answer as of that date
    eligibility_key(query_date)  -> hashable; equal keys give bitwise equal outputs
    name, strategy, policy, block_size, tokenizer

Strategies: avg | learned-avg | coadapt on a bundle (or avg over a folder of run dirs),
`expert:YEAR` (the expert of the slice holding YEAR) and `dense` (a run dir of kind
dense). A dense model or a single expert is a baseline: it has no notion of a query
date and reads every document the same way; its `eligible_experts` says what it is.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from timoe_core.config import MixtureOptions
from timoe_core.device import resolve_device
from timoe_core.errors import TimoeError
from timoe_core.evaluate.evaluated_model import (  # noqa: F401 (the package's names)
    EvaluatedModel,
    MixtureModel,
    QueryDate,
    QueryDates,
    SingleModel,
    model_warnings,
)
from timoe_core.model.bundle import BUNDLE_FILENAME
from timoe_core.model.expert_pool import ExpertRecord, run_dir_artefacts
from timoe_core.model.hub import resolve_model_path
from timoe_core.model.mixture import TiMoE
from timoe_core.model.point_in_time import POLICIES, canonical_policy
from timoe_core.model.run_info import (
    RUN_INFO_FILENAME,
    RunInfo,
    read_run_info,
)
from timoe_core.model.weighting import REGISTRY as STRATEGY_REGISTRY
from timoe_core.model.weights import load_expert
from timoe_core.timeslices import AnswerCutoffs

STRATEGY_HELP = "avg, learned-avg, coadapt, expert:YEAR, dense or dense-series"


def parse_strategy(strategy: str | None) -> tuple[str | None, int | None]:
    """('avg', None) / ('expert', 2016) / ('dense', None); None passes through."""
    if strategy is None:
        return None, None
    text = strategy.strip()
    if text in STRATEGY_REGISTRY or text in ("dense", "dense-series"):
        return text, None
    m = re.fullmatch(r"expert:(\d{4})", text)
    if m:
        return "expert", int(m.group(1))
    raise TimoeError(f"unknown strategy {strategy!r}: use {STRATEGY_HELP}")


def _is_bundle(path: Path) -> bool:
    return (path / BUNDLE_FILENAME).is_file()


def _is_run_dir(path: Path) -> bool:
    return (path / RUN_INFO_FILENAME).is_file()


def _run_dirs_under(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _is_run_dir(p))


def _single(run_dir: Path, device: torch.device, strategy: str, name: str,
            policy: str | None = None) -> EvaluatedModel:
    """One run dir's model. Asked for point-in-time, it answers as of a date with the
    latest of its artefacts (snapshots, final weights) whose data cutoff is on or before
    it, and refuses a date before its first cutoff: never with weights that read later text."""
    if _point_in_time(policy):
        info = read_run_info(run_dir)
        return _artefacts_as_of(run_dir_artefacts(run_dir, info), policy, device, name, strategy)
    gpt, info = load_expert(run_dir, device=device)
    return SingleModel(gpt, info, strategy=strategy, name=name, run_dir=run_dir)


def _point_in_time(policy: str | None) -> bool:
    return policy is not None and canonical_policy(policy) == "point-in-time"


def _artefacts_as_of(records: list[ExpertRecord], policy: str | None, device: torch.device,
                     name: str, strategy: str) -> MixtureModel:
    """The artefacts of one slice (or one dense run) read as of each query date."""
    mix = TiMoE(records, "avg", MixtureOptions(policy=policy), device=device)
    model = MixtureModel(mix, name=name)
    model.strategy = strategy
    return model


def _expert_dir_for_year(run_dirs: list[Path], year: int, where: Path) -> Path:
    experts = [(d, read_run_info(d)) for d in run_dirs]
    experts = [(d, i) for d, i in experts if i.kind == "expert"]
    for d, info in experts:
        if info.time_slice.contains_year(year):
            return d
    labels = ", ".join(i.slice_label for _, i in experts) or "none"
    raise TimoeError(f"no expert in {where} covers {year}: its experts are {labels}")


def load_evaluated_model(
    path: Path | str,
    strategy: str | None = None,
    *,
    policy: str | None = None,
    device: str | torch.device = "auto",
    amp: bool | None = None,
    answer_cutoffs: AnswerCutoffs = "any",
) -> EvaluatedModel:
    """Open what `path` holds as the model `strategy` asks for (default: its own).

    amp: bf16 autocast; None turns it on for CUDA devices only. answer_cutoffs: answer
    only from artefacts whose cutoff is such a period end (point_in_time.py).
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model = _load(resolve_model_path(path), strategy, policy, dev)  # hf:ORG/NAME too
    if answer_cutoffs != "any":
        if not isinstance(model, MixtureModel):
            raise TimoeError(
                f"--answer-cutoffs {answer_cutoffs} picks among a model's artefacts by cutoff, "
                f"but {path} as {model.strategy} is one set of weights: give a bundle, a "
                "dense run as dense-series, or --policy point-in-time"
            )
        model.mix.answer_cutoffs = answer_cutoffs
    model.amp = (model.device.type == "cuda") if amp is None else bool(amp)
    return model


def _load(path: Path, strategy: str | None, policy: str | None, dev: torch.device
          ) -> EvaluatedModel:
    kind, year = parse_strategy(strategy)
    if policy is not None and policy not in POLICIES:
        raise TimoeError(f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}")
    what = "give a TiMoE bundle, a run dir or a folder of run dirs"
    if not path.exists():
        raise TimoeError(f"model {path} does not exist: {what}")
    if not path.is_dir():
        raise TimoeError(f"model {path} is a file: {what}")

    if _is_bundle(path):
        return _load_from_bundle(path, kind, year, policy, dev)

    if _is_run_dir(path):
        info = read_run_info(path)
        if info.kind == "dense" and kind == "dense-series":
            return _dense_series(path, info, policy, dev)
        if info.kind in ("dense", "base"):  # a base reads every year up to its cutoff
            if kind not in (None, "dense"):
                raise TimoeError(
                    f"{path} is a {info.kind} run dir: strategy {strategy!r} needs a TiMoE "
                    "bundle; "
                    "use --strategy dense (or leave it out)"
                )
            return _single(path, dev, "dense", f"dense ({path.name})", policy)
        # a year comes with strategy expert:YEAR only (parse_strategy)
        if kind is None or (year is not None and info.time_slice.contains_year(year)):
            return _single(path, dev, f"expert:{info.slice_label}", f"expert {info.slice_label}",
                           policy)
        if kind == "expert":
            raise TimoeError(
                f"{path} is the expert of {info.slice_label}, which does not cover {year}"
            )
        raise TimoeError(
            f"{path} is a single expert run dir ({info.slice_label}): strategy {strategy!r} "
            "needs a TiMoE bundle or a folder of expert run dirs"
        )

    run_dirs = _run_dirs_under(path)
    if not run_dirs and (path / "config.json").is_file():
        raise TimoeError(
            f"{path} holds a config.json but no {RUN_INFO_FILENAME}: a GPT-2 or GPTBase "
            "checkpoint, not a timoe model; import it first with `timoe import --format "
            "hf|gptbase --source DIR --slice YYYY-YYYY --out RUN_DIR`"
        )
    if not run_dirs:
        raise TimoeError(
            f"{path} is not a TiMoE bundle (no {BUNDLE_FILENAME}), a run dir (no "
            f"{RUN_INFO_FILENAME}) or a folder of run dirs"
        )
    if year is not None:  # expert:YEAR
        d = _expert_dir_for_year(run_dirs, year, path)
        info = read_run_info(d)
        return _single(d, dev, f"expert:{info.slice_label}", f"expert {info.slice_label}",
                       policy)
    if kind == "dense":
        dense = [d for d in run_dirs if read_run_info(d).kind == "dense"]
        if len(dense) != 1:
            raise TimoeError(
                f"{path} holds {len(dense)} dense run dirs: point --model at the one to evaluate"
            )
        return _single(dense[0], dev, "dense", f"dense ({dense[0].name})", policy)
    if kind == "dense-series":  # the folder's one dense run, as its strategy says
        dense = [d for d in run_dirs if read_run_info(d).kind == "dense"]
        if len(dense) != 1:
            raise TimoeError(
                f"{path} holds {len(dense)} dense run dirs: strategy dense-series needs one (a "
                "staged `timoe train-expert --all-years` run); point --model at it"
            )
        return _dense_series(dense[0], read_run_info(dense[0]), policy, dev)
    if kind in ("learned-avg", "coadapt"):
        raise TimoeError(
            f"{path} is a folder of expert run dirs without a router: strategy {kind} needs a "
            f"bundle trained by `timoe {'train-router' if kind == 'learned-avg' else 'coadapt'}`"
        )
    experts = [d for d in run_dirs if read_run_info(d).kind == "expert"]
    if not experts:
        raise TimoeError(f"{path} holds no expert run dirs (only dense ones): use --strategy dense")
    options = MixtureOptions(policy=policy) if policy else None
    mix = TiMoE.from_expert_dirs(experts, strategy="avg", options=options, device=dev)
    return MixtureModel(mix, name=f"avg ({path.name})")


def _dense_series(path: Path, info: RunInfo, policy: str | None, dev: torch.device
                  ) -> MixtureModel:
    """The dense run and its snapshots, one per year: as of d, the latest snapshot trained
    on text up to d (the leak-free baseline)."""
    options = MixtureOptions(policy=policy) if policy else None
    mix = TiMoE(run_dir_artefacts(path, info), "avg", options, device=dev)
    model = MixtureModel(mix, name=f"dense series ({path.name})")
    model.strategy = "dense-series"
    return model


def _load_from_bundle(
    bundle: Path, kind: str | None, year: int | None, policy: str | None, dev: torch.device
) -> EvaluatedModel:
    if kind in ("dense", "dense-series"):
        raise TimoeError(
            f"{bundle} is a TiMoE bundle, not a dense run dir: strategy {kind} needs the dense "
            "run; point --model at it"
        )
    mix = TiMoE.from_bundle(bundle, device=dev)  # timoe.json and the router; no expert yet
    if kind in ("learned-avg", "coadapt") and kind != mix.strategy:
        fix = "train-router --strategy learned-avg" if kind == "learned-avg" else "coadapt"
        raise TimoeError(
            f"bundle {bundle} was built with strategy {mix.strategy} and has no {kind} router: "
            f"train one with `timoe {fix}`, or evaluate it with --strategy {mix.strategy}"
        )
    if policy is not None:
        mix.policy = policy
    if year is not None:  # expert:YEAR
        slices = [s for s in mix.slices if s.contains_year(year)]
        if not slices:
            raise TimoeError(f"no expert in bundle {bundle} covers {year}: its experts are "
                             f"{', '.join(mix.labels)}")
        s = slices[0]
        if _point_in_time(policy):
            return _artefacts_as_of([r for r in mix.artefacts if r.label == s.label], policy,
                                    dev, f"expert {s.label}", f"expert:{s.label}")
        return SingleModel(mix.expert(s), mix.run_infos[s.label], strategy=f"expert:{s.label}",
                           name=f"expert {s.label}", policy=mix.policy)
    if kind == "avg" and mix.strategy != "avg":
        mix = mix.as_average()  # the same experts (coadapt: the adapted ones), equal weights
    return MixtureModel(mix, name=f"{mix.strategy} ({bundle.name})")
