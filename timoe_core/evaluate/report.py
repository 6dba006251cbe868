"""Evaluation reports: the JSON document and plain table data for the CLI (the PNG plots
are evaluate/plots.py).

Nothing here imports rich: the tables are (headers, rows) of strings that the CLI
renders.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from timoe_core import __version__
from timoe_core.config import save_config
from timoe_core.evaluate.evaluated_model import EvaluatedModel
from timoe_core.evaluate.intervals import fmt_interval, wilson_interval
from timoe_core.evaluate.perplexity import PerplexityMatrix, PerplexityResult
from timoe_core.evaluate.tsqa import ERROR_LABELS, TSQAResult
from timoe_core.io import atomic_write_json
from timoe_core.model.point_in_time import canonical_policy, staleness_days
from timoe_core.timeslices import parse_query_date

Table = tuple[list[str], list[list[str]]]


def evaluation_report(
    model: EvaluatedModel,
    *,
    model_path: Path | str,
    query_date: str | None,
    perplexity: PerplexityResult | None = None,
    tsqa: TSQAResult | None = None,
    matrix: PerplexityMatrix | None = None,
    data_dir: Path | str | None = None,
    tsqa_source: str | None = None,
) -> dict[str, Any]:
    """The `evaluate --json` document (its schema: docs/architecture.md)."""
    report: dict[str, Any] = {
        "strategy": model.strategy,
        "query_date": query_date,
        "policy": model.policy,
        "answer_cutoffs": model.answer_cutoffs,
        # every answer as of d depends on no text after d (a dated model under the
        # point-in-time policy); a dense model or the inclusive rule has read later text
        "point_in_time": model.dated and canonical_policy(model.policy) == "point-in-time",
        "eligible_experts": model.eligible_experts(query_date),
        "perplexity": perplexity.by_year() if perplexity else None,
        "tsqa": tsqa.to_dict() if tsqa else None,
        "model": str(model_path),
        "name": model.name,
        "query_date_resolved": parse_query_date(query_date).isoformat() if query_date else None,
        "data": str(data_dir) if data_dir is not None else None,
        "tsqa_source": tsqa_source,
        "perplexity_overall": perplexity.overall() if perplexity else None,
        "perplexity_details": perplexity.to_dict() if perplexity else None,
        "loaded_experts": model.loaded_experts(),
        "timoe_version": __version__,
    }
    if query_date is not None or not model.dated:
        report["artefacts_used"] = model.artefacts_used(query_date)
    if query_date is not None:
        # the query date minus the latest cutoff of what answers: how stale the answer is
        report["staleness_days"] = _staleness(query_date, report["artefacts_used"])
    if query_date is None and model.dated:
        years = set()
        if perplexity:
            years |= set(perplexity.years)
        if tsqa:
            years |= set(tsqa.by_year)
        report["eligible_by_year"] = {
            str(y): (None if model.ineligibility(y) else model.eligible_experts(y))
            for y in sorted(years)
        }
        # Each year's answers as of its own date: the artefacts behind them.
        report["artefacts_used"] = {
            str(y): (None if model.ineligibility(y) else model.artefacts_used(y))
            for y in sorted(years)
        }
        report["staleness_days"] = {
            y: None if used is None else _staleness(y, used)
            for y, used in report["artefacts_used"].items()
        }
    if matrix is not None:
        report["matrix"] = matrix.to_dict()
    return report


def _staleness(query_date: str | int, used: list[dict[str, str]]) -> int:
    return staleness_days(parse_query_date(query_date),
                          [date.fromisoformat(a["data_cutoff"]) for a in used])


def write_report(path: Path, report: Mapping[str, Any], config: BaseModel | None = None) -> None:
    """The JSON, atomically, with the resolved config beside it (`<stem>.config.yaml`)."""
    path = Path(path)
    atomic_write_json(path, report)
    if config is not None:
        save_config(config, path.parent, f"{path.stem}.config.yaml")


# ---------------------------------------------------------------------- tables


def fmt_ppl(x: float | None) -> str:
    """A perplexity in a narrow cell: fewer decimals as it grows."""
    if x is None or math.isnan(x):
        return "—"
    return f"{x:,.0f}" if x >= 1000 else f"{x:.1f}" if x >= 100 else f"{x:.2f}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def rate_cell(k: int | None, n: int | None) -> str:
    """A rate with its count and 95% Wilson interval: `41.3% (302/732) [37.7, 44.9]`."""
    if k is None or not n:
        return "—"
    return f"{pct(k / n)} ({k}/{n}) {fmt_interval(wilson_interval(k, n), percent=True)}"


def tsqa_rate_cell(t: Mapping[str, Any], label: str) -> str:
    """`rate_cell` of "accuracy" or an error label from a TSQA dict (`TSQAResult.to_dict`)."""
    counts = t.get("counts") or {}
    k = counts.get("correct" if label == "accuracy" else label)
    return rate_cell(k, t.get("n"))


def ppl_cell(x: float | None, interval: Sequence[float] | None) -> str:
    """A perplexity and its 95% interval, when it has one."""
    ci = fmt_interval(tuple(interval)) if interval else ""  # type: ignore[arg-type]
    return fmt_ppl(x) + (f" {ci}" if ci and x is not None else "")


def summary_rows(report: Mapping[str, Any]) -> list[list[str]]:
    qd = report["query_date"]
    rows = [
        ["model", f"{report['name']}  [{report['model']}]"],
        ["strategy", str(report["strategy"])],
        ["query date", f"{qd} (= {report['query_date_resolved']})" if qd
         else "each document's own year, each question's own date"],
        ["policy", str(report["policy"])],
        ["eligible experts", ", ".join(report["eligible_experts"]) or "—"],
        ["loaded experts", ", ".join(report["loaded_experts"]) or "—"],
    ]
    if report.get("answer_cutoffs", "any") != "any":
        rows.append(["answer cutoffs", f"{report['answer_cutoffs']} ends only"])
    if isinstance(report.get("staleness_days"), int):
        used = report["artefacts_used"]
        latest = max(a["data_cutoff"] for a in used)
        rows.append(["staleness", f"{report['staleness_days']} days (latest cutoff used {latest})"])
    if report.get("perplexity_overall") is not None:
        rows.append(["perplexity (all years)", fmt_ppl(report["perplexity_overall"])])
    return rows


def perplexity_table(report: Mapping[str, Any]) -> Table:
    details = report["perplexity_details"]["years"]
    by_year = report.get("eligible_by_year")
    headers = ["data year", "perplexity [95% CI]", "tokens", "windows"]
    if by_year:
        headers.append("experts (own date)")
    headers.append("note")
    rows = []
    for y, d in details.items():
        row = [y, ppl_cell(d["perplexity"], d.get("interval")), f"{d['tokens']:,}",
               str(d["windows"])]
        if by_year:
            row.append(", ".join(by_year.get(y) or []) or "—")
        row.append(d["reason"] or "")
        rows.append(row)
    return headers, rows


def tsqa_table(report: Mapping[str, Any]) -> Table:
    t = report["tsqa"]
    headers = ["", "n", "accuracy (k/n) [95% CI]", "acc (norm)",
               *[f"{lab} err" for lab in ERROR_LABELS]]
    rows = []
    groups = [("all", t), *t["by_year"].items()]
    if (t.get("after_change") or {}).get("n"):
        # past err of this row: the stale-answer rate
        groups.append((AFTER_CHANGE_ROW, t["after_change"]))
    for y, d in groups:
        rows.append([y, str(d["n"]), tsqa_rate_cell(d, "accuracy"), pct(d["accuracy_norm"]),
                     *[tsqa_rate_cell(d, lab) for lab in ERROR_LABELS]])
    return headers, rows


AFTER_CHANGE_ROW = "after a change that year (past err: stale answers)"


def stale_cell(t: Mapping[str, Any] | None) -> str:
    """The stale-answer rate of a TSQA dict: the items asked after a change of their answer
    earlier that year that chose the earlier value, with count and 95% interval."""
    group = (t or {}).get("after_change") or {}
    return rate_cell(group.get("stale"), group.get("n"))


def matrix_table(report: Mapping[str, Any]) -> Table:
    m = report["matrix"]
    headers = ["query \\ data", *m["data_years"]]
    rows = [[q, *map(fmt_ppl, vals)] for q, vals in zip(m["query_dates"], m["perplexity"])]
    return headers, rows


def is_json_report(path: Path) -> bool:
    """A JSON report `evaluate --json` / `compare --json` wrote (safe to replace)."""
    try:
        data = json.loads(path.read_bytes()[: 64 << 20])
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "query_date" in data


def is_png(path: Path) -> bool:
    """A PNG file (a plot written before; safe to replace)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False
