"""The demo's headline: each model's QA figures, and whether every point-in-time TiMoE
strategy leaks fewer future answers than the dense model, tested on 95% intervals."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from timoe_core.evaluate.intervals import newcombe_difference

LeakVerdict = Literal["fewer", "within-noise", "more"]


class FutureErrorDifference(TypedDict):
    """Dense future-error rate minus a TiMoE strategy's, and its 95% Newcombe interval."""

    difference: float
    interval: list[float]  # [low, high]


def _future_counts(model: dict[str, Any]) -> tuple[int, int] | None:
    """(future-error count, items) of a compared model's TSQA result, None without one."""
    qa = model.get("tsqa") or {}
    counts = qa.get("counts") or {}
    if not qa.get("n") or "future" not in counts:
        return None
    return counts["future"], qa["n"]


def leak_verdict(dense: tuple[int, int], timoe: dict[str, tuple[int, int]]
                 ) -> tuple[LeakVerdict, dict[str, FutureErrorDifference]]:
    """Does every TiMoE strategy leak fewer future answers than the dense model?

    `dense` and each `timoe` value are (future-error count, items). Per strategy the 95%
    Newcombe interval of dense rate - TiMoE rate: "fewer" when every interval lies above
    0, "more" when some interval lies below 0, otherwise "within-noise". Every count needs
    at least one item."""
    diffs: dict[str, FutureErrorDifference] = {}
    for label, (k, n) in timoe.items():
        ci = newcombe_difference(dense[0], dense[1], k, n)
        if ci is None:
            raise ValueError(f"leak_verdict needs items on both sides: dense {dense}, "
                             f"{label} {(k, n)}")
        diffs[label] = {"difference": dense[0] / dense[1] - k / n, "interval": list(ci)}
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
    counts = {k: _future_counts(m) for k, m in models.items()
              if k.startswith("TiMoE") and "inclusive" not in k}
    timoe = {k: v for k, v in counts.items() if v is not None}
    verdict: LeakVerdict | None = None
    diffs: dict[str, FutureErrorDifference] = {}
    if dense is not None and timoe and len(timoe) == len(counts):  # every strategy has QA
        verdict, diffs = leak_verdict(dense, timoe)
    return {"models": rows, "leak_verdict": verdict, "future_error_differences": diffs,
            "claim": verdict_line(verdict, dense[1]) if verdict and dense else None,
            "timoe_leaks_less_than_dense": None if verdict is None else verdict == "fewer"}
