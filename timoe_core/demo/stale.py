"""Stale answers by cutoffs: the built-in questions asked after their answer changed that
year, answered from year-end and from month-end artefacts, and the claim the 95%
intervals support."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from timoe_core.demo.settings import DemoSettings, EvalProgress
from timoe_core.evaluate.intervals import newcombe_difference
from timoe_core.timeslices import AnswerCutoffs

if TYPE_CHECKING:
    from timoe_core.evaluate.report import Table

STALE_SAME_ARTEFACTS_NOTE = ("this demo trained a stage per year, so month-end and year-end "
                             "artefacts are the same ones: both columns agree by "
                             "construction (timoe demo --cutoff-every month trains monthly "
                             "stages)")

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
        # None exactly when `common` is empty (both columns count its items)
        ci = newcombe_difference(yearly["stale"], yearly["n"], monthly["stale"], monthly["n"])
        if ci is not None:
            models[label].update(difference=yearly["stale_rate"] - monthly["stale_rate"],
                                 interval=list(ci))
    verdict = stale_verdict(models) if common and models else None
    return {"items": len(common), "asked_after_change": len(items), "models": models,
            "verdict": verdict, "stages_every": s.cutoff_every,
            "note": STALE_SAME_ARTEFACTS_NOTE if s.cutoff_every == "year" else None,
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
