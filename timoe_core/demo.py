"""`timoe demo`: the whole pipeline on the built-in corpus, one stage at a time.

Each stage calls the library function behind the matching CLI command:

    data          prepare_data (builtin corpus)                      OUT/data
    expert L      train_expert --year, one per time slice, a         OUT/experts/L
                  snapshot after its first year (point-in-time)
    dense         train_expert --all-years, the same steps per year  OUT/dense
                  as the experts: its snapshots are the leak-free dense series, its
                  final weights the all-years (leaky) dense baseline
    avg           train_router --strategy avg (a bundle, no training)  OUT/timoe-avg
    inclusive     the same avg bundle under the paper code's rule    OUT/timoe-inclusive
    learned-avg   train_router --strategy learned-avg, staged        OUT/timoe-learned-avg
    coadapt       coadapt, staged, from the learned-avg router       OUT/timoe-coadapt
    evaluate      compare_models: held-out perplexity per data year and the built-in
                  temporal QA, each item read as of its own date     OUT/report.json, *.png
                  (and the stale answers after a change that year, from year-end
                  against month-end artefacts: stale_by_cutoffs)

Resume: OUT/demo.json records the settings and each finished stage. A rerun skips the
finished stages; a training stage that was interrupted resumes from its last
checkpoint, since the training functions resume by themselves.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from timoe_core.config import (
    CONFIG_FILENAME,
    CoadaptConfig,
    DemoConfig,
    PrepareDataConfig,
    TrainExpertConfig,
    TrainRouterConfig,
    save_config,
)
from timoe_core.errors import TimoeError
from timoe_core.evaluate.intervals import newcombe_difference
from timoe_core.io import atomic_write_json, check_output_path
from timoe_core.lock import lock_path, output_lock
from timoe_core.timeslices import AnswerCutoffs, CutoffEvery, TimeSlicing

if TYPE_CHECKING:
    from timoe_core.evaluate.report import Table

STATE_FILENAME = "demo.json"
REPORT_FILENAME = "report.json"
QA_PLOT_FILENAME = "tsqa.png"
PERPLEXITY_PLOT_FILENAME = "perplexity.png"
QUICK_DOCS_PER_YEAR = 40  # --quick's corpus size (what tells a quick run's settings apart)


class DemoSettings(BaseModel):
    """Everything that decides the demo's numbers; a rerun must match it to resume."""

    docs_per_year: int
    val_fraction: float  # the held-out share: enough windows for every year's perplexity
    seq_len: int
    n_layer: int
    n_head: int
    n_embd: int
    batch_size: int
    expert_lr: float
    expert_steps: int  # per year-stage of every expert and of the dense model
    router_steps: int  # per router stage (one per data year)
    router_lr: float
    coadapt_steps: int  # per coadapt stage
    coadapt_lr: float
    eval_windows_per_year: int
    eval_items: int | None  # None: every built-in question
    seed: int
    device: str


def demo_settings(cfg: DemoConfig) -> DemoSettings:
    """The default run (<= 10 min on a 2-core CPU) or --quick (<= 2 min)."""
    # Batch 8: at equal tokens, twice the optimizer steps of batch 16 take a tiny expert
    # from held-out loss 2.76 to 1.32 in the same time (2013-2014 expert, 40x16 vs 80x8).
    common = dict(val_fraction=0.1, seq_len=64, n_layer=2, n_head=4, n_embd=128,
                  batch_size=8, expert_lr=3e-3, router_lr=3e-3, coadapt_lr=3e-4,
                  seed=cfg.seed, device=cfg.device)
    if cfg.quick:
        return DemoSettings(**common, docs_per_year=QUICK_DOCS_PER_YEAR, expert_steps=8, router_steps=1,
                            coadapt_steps=1, eval_windows_per_year=4, eval_items=48)
    return DemoSettings(**common, docs_per_year=200, expert_steps=40, router_steps=5,
                        coadapt_steps=3, eval_windows_per_year=8, eval_items=None)


@dataclass(frozen=True)
class DemoLayout:
    """Where each stage writes, under the demo's --out."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def experts(self) -> Path:
        return self.root / "experts"

    @property
    def dense(self) -> Path:
        return self.root / "dense"

    def bundle(self, strategy: str) -> Path:
        return self.root / f"timoe-{strategy}"

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILENAME


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[], Any]


# on_stage(index (1-based), total, stage, skipped)
StageCallback = Callable[[int, int, Stage, bool], None]
# eval_progress(description, done, total), as compare_models reports it
EvalProgress = Callable[[str, int, int], None]


# The demo's stages: one per year (see _training). With yearly artefacts the stale-answer
# table's two columns answer from the same artefacts; monthly stages make them differ.
DEMO_CUTOFF_EVERY: CutoffEvery = "year"
STALE_SAME_ARTEFACTS_NOTE = ("the demo trains a stage per year, so month-end and year-end "
                             "artefacts are the same ones here: both columns agree by "
                             "construction until its stages are monthly")


def _training(s: DemoSettings, steps: int, lr: float) -> dict[str, Any]:
    """The options every demo training stage shares: `steps` per chronological stage, a
    stage per year (its budgets and disk use are sized for yearly cutoffs: a snapshot of
    the tiny preset is ~26 MB in fp32, and monthly ones would be 12 times as many)."""
    return dict(steps_per_stage=steps, batch_size=s.batch_size, lr=lr, seed=s.seed,
                device=s.device, log_every=max(1, steps // 2), cutoff_every=DEMO_CUTOFF_EVERY)


def _stages(
    s: DemoSettings, layout: DemoLayout, slicing: TimeSlicing, eval_progress: EvalProgress | None,
    keep_checkpoints: bool = False,
) -> list[Stage]:
    from timoe_core.data.prepare import prepare_data
    from timoe_core.recipes.registry import coadapt, train_router
    from timoe_core.train import train_expert

    model = dict(n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, seq_len=s.seq_len)
    expert_training = _training(s, s.expert_steps, s.expert_lr)
    stages = [Stage("data", "prepare-data: the built-in corpus", lambda: prepare_data(
        PrepareDataConfig(source="builtin", out=layout.data, seq_len=s.seq_len,
                          val_fraction=s.val_fraction,
                          builtin_docs_per_year=s.docs_per_year, seed=s.seed, overwrite=True)))]
    for sl in slicing.slices:
        stages.append(Stage(f"expert {sl.label}", f"train-expert: the {sl.label} expert",
                            lambda sl=sl: train_expert(TrainExpertConfig(
                                year=sl.start_year, data=layout.data,
                                out=layout.experts / sl.label, **model, **expert_training))))
    stages.append(Stage("dense", "train-expert --all-years: dense series, same compute",
                        lambda: train_expert(TrainExpertConfig(
                            all_years=True, data=layout.data, out=layout.dense, **model,
                            **expert_training))))
    stages.append(Stage("avg", "train-router --strategy avg: the equal-weight bundle",
                        lambda: train_router(TrainRouterConfig(
                            strategy="avg", experts=[layout.experts], out=layout.bundle("avg"),
                            overwrite=True))))
    stages.append(Stage("inclusive", "train-router --strategy avg --policy inclusive",
                        lambda: train_router(TrainRouterConfig(
                            strategy="avg", experts=[layout.experts], policy="inclusive",
                            out=layout.bundle("inclusive"), overwrite=True))))
    stages.append(Stage("learned-avg", "train-router --strategy learned-avg",
                        lambda: train_router(TrainRouterConfig(
                            strategy="learned-avg", experts=[layout.experts], data=layout.data,
                            out=layout.bundle("learned-avg"),
                            keep_stage_checkpoints=keep_checkpoints,
                            **_training(s, s.router_steps, s.router_lr)))))
    stages.append(Stage("coadapt", "coadapt: router and each batch's own expert",
                        lambda: coadapt(CoadaptConfig(
                            experts=[layout.experts], data=layout.data,
                            out=layout.bundle("coadapt"), router=layout.bundle("learned-avg"),
                            keep_stage_checkpoints=keep_checkpoints,
                            **_training(s, s.coadapt_steps, s.coadapt_lr)))))
    stages.append(Stage("evaluate", "evaluate: every strategy and baseline, side by side",
                        lambda: _evaluate(s, layout, slicing, eval_progress)))
    return stages


# Models compared in the report: (label, entry for compare_models).
def _entries(layout: DemoLayout, slicing: TimeSlicing) -> list[tuple[str, str]]:
    return [
        ("TiMoE avg", f"{layout.bundle('avg')}:avg"),
        ("TiMoE learned-avg", f"{layout.bundle('learned-avg')}:learned-avg"),
        ("TiMoE coadapt", f"{layout.bundle('coadapt')}:coadapt"),
        ("TiMoE avg, inclusive (paper rule)", f"{layout.bundle('inclusive')}:avg"),
        ("dense series (leak-free)", f"{layout.dense}:dense-series"),
        ("dense (all years)", f"{layout.dense}:dense"),
    ]


def _evaluate(
    s: DemoSettings, layout: DemoLayout, slicing: TimeSlicing, progress: EvalProgress | None
) -> dict[str, Any]:
    from timoe_core.evaluate import compare_models, plot_compare

    entries = _entries(layout, slicing)
    result = compare_models(
        [e for _, e in entries], layout.data, "builtin", max_docs=s.eval_windows_per_year,
        max_items=s.eval_items, seq_len=s.seq_len, device=s.device, progress=progress,
    )
    for (label, _), model in zip(entries, result["models"]):
        model["label"] = label
    stale = stale_by_cutoffs(s, [(label, e) for label, e in entries if label in STALE_MODELS],
                             progress)
    report = {"settings": s.model_dump(), "comparison": result, "headline": headline(result),
              "stale_by_cutoffs": stale,
              "note": QUICK_NOTE if s.docs_per_year <= QUICK_DOCS_PER_YEAR else None}
    atomic_write_json(layout.report, report)
    plot_compare(layout.root / QA_PLOT_FILENAME, result, panels=("qa",))
    plot_compare(layout.root / PERPLEXITY_PLOT_FILENAME, result, panels=("perplexity",))
    return report


LeakVerdict = Literal["fewer", "within-noise", "more"]

QUICK_NOTE = ("--quick checks that the pipeline runs end to end; its models and question "
              "set are too small to compare models: read its figures as noise")


def _future_counts(model: dict[str, Any]) -> tuple[int, int] | None:
    """(future-error count, items) of a compared model's TSQA result, None without one."""
    qa = model.get("tsqa") or {}
    counts = qa.get("counts") or {}
    if not qa.get("n") or "future" not in counts:
        return None
    return counts["future"], qa["n"]


def leak_verdict(dense: tuple[int, int], timoe: dict[str, tuple[int, int]]
                 ) -> tuple[LeakVerdict, dict[str, dict[str, Any]]]:
    """Does every TiMoE strategy leak fewer future answers than the dense model?

    `dense` and each `timoe` value are (future-error count, items). Per strategy the 95%
    Newcombe interval of dense rate - TiMoE rate: "fewer" when every interval lies above
    0, "more" when some interval lies below 0, otherwise "within-noise"."""
    diffs = {}
    for label, (k, n) in timoe.items():
        lo, hi = newcombe_difference(dense[0], dense[1], k, n)  # type: ignore[misc]
        diffs[label] = {"difference": dense[0] / dense[1] - k / n, "interval": [lo, hi]}
    if diffs and all(d["interval"][0] > 0 for d in diffs.values()):
        return "fewer", diffs
    if any(d["interval"][1] < 0 for d in diffs.values()):
        return "more", diffs
    return "within-noise", diffs


def verdict_line(verdict: LeakVerdict, n: int) -> str:
    """The claim the demo prints: only what the intervals support."""
    if verdict == "fewer":
        return ("every TiMoE strategy leaks fewer future answers than the dense model "
                f"(95% interval of each difference above 0, {n} questions)")
    if verdict == "more":
        return ("some TiMoE strategy leaks more future answers than the dense model "
                f"(95% interval of the difference below 0, {n} questions)")
    return (f"the future-error rates of TiMoE and the dense model differ within noise at "
            f"{n} questions (a 95% interval of a difference includes 0): no claim either way")


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The demo's claim in numbers: each model's QA accuracy and future-error rate with
    their counts and 95% intervals, and whether every (point-in-time) TiMoE strategy
    leaks fewer future answers than the dense model, tested on the intervals."""
    rows = {}
    for m in result["models"]:
        qa = m.get("tsqa") or {}
        rows[m["label"]] = {
            "accuracy": qa.get("accuracy"),
            "future_error": (qa.get("error_rates") or {}).get("future"),
            "n": qa.get("n"),
            "counts": qa.get("counts"),
            "intervals": qa.get("intervals"),
            "perplexity_mean": m.get("perplexity_mean"),
            "perplexity_mean_interval": m.get("perplexity_mean_interval"),
            "point_in_time": m.get("point_in_time"),
        }
    models = {m["label"]: m for m in result["models"]}
    dense = next((_future_counts(m) for k, m in models.items() if k.startswith("dense (all")),
                 None)
    timoe = {k: _future_counts(m) for k, m in models.items()
             if k.startswith("TiMoE") and "inclusive" not in k}
    verdict: LeakVerdict | None = None
    diffs: dict[str, dict[str, Any]] = {}
    if dense is not None and timoe and all(v is not None for v in timoe.values()):
        verdict, diffs = leak_verdict(dense, timoe)  # type: ignore[arg-type]
    return {"models": rows, "leak_verdict": verdict, "future_error_differences": diffs,
            "claim": verdict_line(verdict, dense[1]) if verdict and dense else None,
            "timoe_leaks_less_than_dense": None if verdict is None else verdict == "fewer"}


# The models whose stale answers the demo compares by cutoffs: every point-in-time
# strategy and the leak-free dense series (the others have no cutoffs to choose from).
STALE_MODELS = ("TiMoE avg", "TiMoE learned-avg", "TiMoE coadapt", "dense series (leak-free)")
StaleVerdict = Literal["fewer", "within-noise", "more"]
# (yearly, monthly): the artefacts each column answers from (evaluate --answer-cutoffs)
STALE_CUTOFFS: tuple[AnswerCutoffs, AnswerCutoffs] = ("year", "month")


def stale_by_cutoffs(s: DemoSettings, entries: list[tuple[str, str]],
                     progress: EvalProgress | None = None) -> dict[str, Any]:
    """The stale-answer rate of each model on the built-in questions asked after their
    answer changed earlier that year, answered from month-end artefacts
    (`answer_cutoffs="month"`) and from year-end artefacts only ("year": as a build with
    yearly cutoffs answers), on the items every model answers both ways; per model the
    95% Newcombe interval of yearly - monthly, and the claim the intervals support."""
    from timoe_core.evaluate.compare import parse_entry
    from timoe_core.evaluate.models import load_evaluated_model
    from timoe_core.evaluate.tsqa import asked_after_change, load_tsqa, score_tsqa

    items = [it for it in load_tsqa("builtin", max_items=s.eval_items)
             if asked_after_change(it)]
    results = {}
    for label, entry in entries:
        path, strategy = parse_entry(entry)
        pair = []
        for every in STALE_CUTOFFS:
            model = load_evaluated_model(path, strategy, device=s.device, answer_cutoffs=every)
            cb = ((lambda d, t, e=f"{label}, {every}-end artefacts": progress(e, d, t))
                  if progress else None)
            pair.append(score_tsqa(model, items, progress=cb))
            del model
        results[label] = pair
    common = set(range(len(items)))
    for pair in results.values():
        for r in pair:
            common &= set(r.indices)
    reason = "left out: not every model answers it from year-end and from month-end artefacts"
    models: dict[str, dict[str, Any]] = {}
    for label, pair in results.items():
        yearly, monthly = (r.restricted(common, reason).after_change for r in pair)
        models[label] = {"yearly": yearly, "monthly": monthly}
        if common:
            lo, hi = newcombe_difference(yearly["stale"], yearly["n"], monthly["stale"],
                                         monthly["n"])  # type: ignore[misc]
            models[label].update(difference=yearly["stale_rate"] - monthly["stale_rate"],
                                 interval=[lo, hi])
    verdict = stale_verdict(models) if common and models else None
    return {"items": len(common), "asked_after_change": len(items), "models": models,
            "verdict": verdict, "stages_every": DEMO_CUTOFF_EVERY,
            "note": STALE_SAME_ARTEFACTS_NOTE if DEMO_CUTOFF_EVERY == "year" else None,
            "claim": stale_line(verdict, len(common)) if verdict else None}


def stale_verdict(models: dict[str, dict[str, Any]]) -> StaleVerdict:
    """"fewer" when every model's interval of yearly - monthly stale rate lies above 0,
    "more" when some lies below 0, otherwise "within-noise"."""
    intervals = [m["interval"] for m in models.values()]
    if all(lo > 0 for lo, _ in intervals):
        return "fewer"
    if any(hi < 0 for _, hi in intervals):
        return "more"
    return "within-noise"


def stale_line(verdict: StaleVerdict, n: int) -> str:
    """The stale-answer claim the demo prints: only what the intervals support."""
    if verdict == "fewer":
        return ("answered from monthly cutoffs, every TiMoE strategy and the dense series give "
                "fewer stale answers than from yearly ones (95% interval of each difference "
                f"above 0, {n} questions asked after a change that year)")
    if verdict == "more":
        return ("answered from monthly cutoffs, some model gives more stale answers than from "
                f"yearly ones (95% interval of the difference below 0, {n} questions)")
    return (f"the stale-answer rates from monthly and yearly cutoffs differ within noise at {n} "
            "questions (a 95% interval of a difference includes 0): no claim either way")


def stale_table(stale: dict[str, Any]) -> Table:
    """One row per model: the stale-answer rate (count, 95% interval) from yearly and from
    monthly cutoffs, and the difference with its 95% interval."""
    from timoe_core.evaluate.report import rate_cell

    headers = ["", "yearly cutoffs (k/n) [95% CI]",
               "monthly cutoffs (k/n) [95% CI]", "yearly - monthly [95% CI]"]
    rows = []
    for label, m in stale["models"].items():
        diff = "—"
        if m.get("interval"):
            lo, hi = m["interval"]
            diff = f"{100 * m['difference']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        rows.append([label, rate_cell(m["yearly"]["stale"], m["yearly"]["n"]),
                     rate_cell(m["monthly"]["stale"], m["monthly"]["n"]), diff])
    return headers, rows


@dataclass(frozen=True)
class DiskPlan:
    """What the demo will hold on disk, against what is free where it writes."""

    need: int  # bytes the whole demo holds at its peak (estimate)
    written: int  # bytes already under --out (a resumed demo)
    free: int  # bytes free on --out's file system

    @property
    def missing(self) -> int:
        return max(0, self.need - self.written - self.free)

    def line(self, out: Path) -> str:
        gb = 1e9
        done = f", {self.written / gb:.1f} GB of it already written" if self.written else ""
        return (f"disk: the demo needs about {self.need / gb:.1f} GB under {out}{done}; "
                f"{self.free / gb:.1f} GB free")


def _weight_bytes(s: DemoSettings) -> tuple[int, int]:
    """(bytes of one expert's weights, of one router's) at the demo's sizes, counted on
    the meta device (nothing allocated)."""
    import torch

    from timoe_core.model.gpt import GPT, pad_vocab, preset_config
    from timoe_core.model.router import Router, RouterConfig
    from timoe_core.tokenizer import get_tokenizer

    vocab = get_tokenizer().vocab_size
    labels = [sl.label for sl in TimeSlicing().slices]
    with torch.device("meta"):
        gpt = GPT(preset_config(TrainExpertConfig.model_fields["preset"].default,
                                vocab_size=pad_vocab(vocab), n_layer=s.n_layer,
                                n_head=s.n_head, n_embd=s.n_embd, block_size=s.seq_len))
        router = Router(RouterConfig(slice_labels=labels, vocab_size=vocab))

    def size(m: torch.nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in m.parameters())
    return size(gpt), size(router)


def disk_needed(s: DemoSettings, keep_checkpoints: bool) -> int:
    """Bytes the demo holds at its peak: every artefact it keeps, plus the trainer
    checkpoints of the run in progress (two kept, each the weights and AdamW's two
    moments), or of every run with `keep_checkpoints`. Measured against `du` in
    tests/test_demo.py."""
    w, r = _weight_bytes(s)
    slicing = TimeSlicing()
    n_slices = len(slicing.slices)
    n_years = slicing.end_year - slicing.start_year + 1
    stages = n_years  # one router stage per data year (every artefact cutoff)
    kept = (2 * n_slices * w  # each expert: final weights + a snapshot after its first year
            + n_years * w  # the dense run: final weights + a snapshot per earlier year
            + (stages + 1) * r  # learned-avg: a router per stage + the latest
            + (stages + 1) * r + stages * w  # coadapt: the same + an adapted expert a stage
            + (64 << 20))  # the data, reports, plots, metrics (a few MB)
    checkpoint = 2 * 3  # two checkpoints of weights + two AdamW moments
    if not keep_checkpoints:
        return kept + checkpoint * (w + r)  # the largest run in progress: a coadapt stage
    # the demo's router stages are a few steps each: one checkpoint at their end
    return (kept + checkpoint * (n_slices + 1) * w  # every expert and the dense run
            + stages * 3 * r  # learned-avg stages
            + stages * 3 * (w + r))  # coadapt stages


def _bytes_under(path: Path) -> int:
    """Bytes of the files under `path`, a file hard-linked twice counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in path.rglob("*") if path.is_dir() else []:
        try:
            st = p.lstat()
        except OSError:
            continue
        if p.is_file() and not p.is_symlink() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def disk_plan(cfg: DemoConfig) -> DiskPlan:
    """The demo's disk estimate against the free space of --out's file system."""
    where = cfg.out.resolve()
    while not where.exists():  # the nearest folder that exists: --out's file system
        where = where.parent
    return DiskPlan(need=disk_needed(demo_settings(cfg), cfg.keep_checkpoints),
                    written=_bytes_under(cfg.out), free=shutil.disk_usage(where).free)


def _check_disk(cfg: DemoConfig) -> None:
    """Refuse to start when the free space is clearly not enough (nothing written)."""
    plan = disk_plan(cfg)
    if plan.missing:
        raise TimoeError(
            f"{plan.line(cfg.out)}: {plan.missing / 1e9:.1f} GB short; free disk space or give "
            "another --out"
        )


def _prune_finished(stage: Stage, layout: DemoLayout) -> None:
    """A finished training stage is never resumed: drop its runs' trainer checkpoints
    (optimizer moments and all; weights, snapshots and metrics stay). Staged routers
    drop theirs themselves (`keep_stage_checkpoints`)."""
    from timoe_core.train.state import checkpoints_dir

    if stage.name.startswith("expert "):
        runs = [layout.experts / stage.name.removeprefix("expert ")]
    elif stage.name == "dense":
        runs = [layout.dense]
    else:
        return
    for run in runs:
        shutil.rmtree(checkpoints_dir(run), ignore_errors=True)


def _read_state(path: Path) -> dict[str, Any] | None:
    """demo.json, or None when it is not a demo state ({"settings": {...}, "finished":
    {stage: {"seconds": N}}}): a folder holding another file of that name is no demo."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(state, dict) and isinstance(state.get("settings"), dict)
          and isinstance(state.get("finished"), dict)
          and all(isinstance(v, dict) and isinstance(v.get("seconds"), (int, float))
                  for v in state["finished"].values()))
    return state if ok else None


def _is_demo_output(p: Path) -> bool:
    """An entry of --out that the demo writes (all --overwrite may delete)."""
    fixed = {"data", "experts", "dense", STATE_FILENAME, REPORT_FILENAME, QA_PLOT_FILENAME,
             PERPLEXITY_PLOT_FILENAME, CONFIG_FILENAME}
    if p.name in fixed or re.fullmatch(r"timoe-[a-z-]+", p.name):
        return True
    # locks, staging and temp files of the commands the demo runs
    return p.name.startswith(".") and (
        p.name.endswith((".lock", ".tmp")) or ".partial-" in p.name or ".old-" in p.name
    )


def _remove_demo_outputs(out: Path) -> None:
    """Delete what an earlier demo wrote in `out`, refusing (before deleting anything)
    when `out` holds anything else: --overwrite never deletes a user's file."""
    foreign = [p for p in sorted(out.iterdir()) if not _is_demo_output(p)]
    if foreign:
        raise TimoeError(
            f"--out {out} holds {foreign[0]}, which the demo did not write: refusing to "
            "start the demo over there even with --overwrite; move it out or give another --out"
        )
    for p in sorted(out.iterdir()):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p != lock_path(out):
            p.unlink()


def _check_out(cfg: DemoConfig, settings: DemoSettings) -> dict[str, Any]:
    """The demo state to continue from; refuses to write into a folder that is not a demo
    of the same settings (it never deletes anything but an earlier demo's folder)."""
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise TimoeError(f"--out {out} is a file: give a folder for the demo")
    check_output_path(out, "--out")
    state_path = out / STATE_FILENAME
    state = _read_state(state_path) if state_path.is_file() else None
    if out.is_dir() and any(out.iterdir()) and state is None:
        raise TimoeError(f"--out {out} is not empty and holds no demo: give a new folder")
    if state is not None and state.get("settings") != settings.model_dump():
        if not cfg.overwrite:
            diff = sorted(k for k, v in settings.model_dump().items()
                          if (state.get("settings") or {}).get(k) != v)
            raise TimoeError(f"--out {out} holds a demo with other settings ({', '.join(diff)}):"
                             " pass --overwrite to start it over, or give another --out")
        _remove_demo_outputs(out)
        state = None
    if state is None:
        state = {"settings": settings.model_dump(), "finished": {}}
    return state


def run_demo(
    cfg: DemoConfig,
    on_stage: StageCallback | None = None,
    eval_progress: EvalProgress | None = None,
) -> dict[str, Any]:
    """Run (or resume) every stage; returns the report (also in OUT/report.json)."""
    with output_lock(cfg.out):
        return _run_demo(cfg, on_stage, eval_progress)


def _run_demo(
    cfg: DemoConfig, on_stage: StageCallback | None, eval_progress: EvalProgress | None
) -> dict[str, Any]:
    settings = demo_settings(cfg)
    state = _check_out(cfg, settings)
    _check_disk(cfg)
    layout = DemoLayout(cfg.out)
    cfg.out.mkdir(parents=True, exist_ok=True)
    state_path = cfg.out / STATE_FILENAME
    atomic_write_json(state_path, state)
    save_config(cfg, cfg.out)
    stages = _stages(settings, layout, TimeSlicing(), eval_progress, cfg.keep_checkpoints)
    report: dict[str, Any] | None = None
    ran_any = False
    for i, stage in enumerate(stages, 1):
        done = stage.name in state["finished"]
        if on_stage:
            on_stage(i, len(stages), stage, done)
        if not done:
            t0 = time.perf_counter()
            ran_any = True
            value = stage.run()
            if stage.name == "evaluate":
                report = value
            state["finished"][stage.name] = {"seconds": round(time.perf_counter() - t0, 2)}
            atomic_write_json(state_path, state)
        if not cfg.keep_checkpoints:  # also a stage finished before a kill let it prune
            _prune_finished(stage, layout)
    if report is None:
        report = json.loads(layout.report.read_text())
    report["stage_seconds"] = {k: v["seconds"] for k, v in state["finished"].items()}
    report["total_seconds"] = round(sum(report["stage_seconds"].values()), 2)
    if ran_any:  # a rerun that skipped every stage leaves report.json as it was
        atomic_write_json(layout.report, report)
    return report
