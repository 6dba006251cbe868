"""Evaluation reports: the JSON document, plain table data for the CLI, and PNG plots.

Nothing here imports rich: the tables are (headers, rows) of strings that the CLI
renders. Plots use matplotlib's Agg canvas directly (headless, no global backend
switch) and every file is written atomically.
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
from timoe_core.evaluate.intervals import fmt_interval, wilson_interval
from timoe_core.evaluate.models import EvaluatedModel
from timoe_core.evaluate.perplexity import PerplexityMatrix, PerplexityResult
from timoe_core.evaluate.tsqa import ERROR_LABELS, TSQAResult
from timoe_core.io import atomic_path, atomic_write_json
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


# ----------------------------------------------------------------------- plots


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_perplexity(
    path: Path, series: Mapping[str, Mapping[str, float | None]], title: str
) -> None:
    """Perplexity by data year, one line per model; null years are gaps."""
    fig = _new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    years = sorted({y for s in series.values() for y in s}, key=int)
    for label, values in series.items():
        ys = [values.get(y) for y in years]
        ax.plot([int(y) for y in years], [math.nan if v is None else v for v in ys],
                marker="o", label=label)
    ax.set_xlabel("data year (held-out text)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.set_xticks([int(y) for y in years])
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")
    _save_png(fig, path)


def _label_color(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever reads on a cell of colour `rgba` (relative luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def plot_matrix(path: Path, matrix: Mapping[str, Any], title: str) -> Any:
    """Query date x data year heatmap of perplexity on a log colour scale (perplexities
    span orders of magnitude: on a linear one the low rows all look alike); every cell
    is labelled in the colour that reads on it; cells without an expert are grey."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    values = np.array([[math.nan if v is None else v for v in row] for row in matrix["perplexity"]],
                      dtype=float)
    rows, cols = values.shape
    fig = _new_figure(max(5.5, 0.8 * cols + 2.8), max(4.0, 0.5 * rows + 1.8))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(values)
    finite = values[np.isfinite(values) & (values > 0)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (1.0, 10.0)
    norm = LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 1.01)
    cmap = colormaps["viridis_r"].with_extremes(bad="#d0d0d0")
    im = ax.imshow(masked, cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(cols), matrix["data_years"], rotation=45)
    ax.set_yticks(range(rows), matrix["query_dates"])
    ax.set_xlabel("data year")
    ax.set_ylabel("query date")
    ax.set_title(title)
    if rows * cols <= 400:
        size = 8 if cols <= 12 else 6
        for i in range(rows):
            for j in range(cols):
                v = values[i, j]
                if math.isnan(v):
                    ax.text(j, i, "—", ha="center", va="center", fontsize=size, color="black")
                    continue
                text = f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=size,
                        color=_label_color(cmap(norm(v))))
    fig.colorbar(im, ax=ax, label="perplexity (log scale)")
    _save_png(fig, path)
    return fig


# One colour per outcome of a TSQA item: the answer, or which kind of wrong answer.
QA_OUTCOMES: tuple[tuple[str, str], ...] = (
    ("correct", "#2ca02c"), ("past", "#1f77b4"), ("future", "#d62728"),
    ("irrelevant", "#7f7f7f"),
)


def _qa_shares(tsqa: Mapping[str, Any] | None) -> list[float]:
    """[correct, past, future, irrelevant] shares of one TSQA result (zeros if none)."""
    tsqa = tsqa or {}
    rates = tsqa.get("error_rates") or {}
    return [tsqa.get("accuracy") or 0.0] + [rates.get(k) or 0.0 for k in ERROR_LABELS]


def _stacked_bars(ax, labels: list[str], shares: list[list[float]], *, min_label: float,
                  fontsize: float, width: float = 0.7) -> None:
    """One stacked bar per label (correct at the bottom), each segment's share printed
    inside it when the segment is at least `min_label` tall."""
    bottoms = [0.0] * len(labels)
    for k, (outcome, color) in enumerate(QA_OUTCOMES):
        heights = [s[k] for s in shares]
        ax.bar(range(len(labels)), heights, width, bottom=bottoms, color=color, label=outcome)
        for x, (h, b) in enumerate(zip(heights, bottoms)):
            if h >= min_label:
                ax.text(x, b + h / 2, f"{100 * h:.0f}", ha="center", va="center",
                        fontsize=fontsize, color="white")
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25", "50", "75", "100"])


def _draw_qa_overall(ax, models: list[Mapping[str, Any]], names: list[str]) -> None:
    _stacked_bars(ax, names, [_qa_shares(m.get("tsqa")) for m in models], min_label=0.03,
                  fontsize=8)
    # accuracy's 95% Wilson interval on top of the correct segment
    for x, m in enumerate(models):
        ci = ((m.get("tsqa") or {}).get("intervals") or {}).get("accuracy")
        acc = (m.get("tsqa") or {}).get("accuracy")
        if ci and acc is not None:
            ax.errorbar([x], [acc], yerr=[[acc - ci[0]], [ci[1] - acc]], fmt="none",
                        ecolor="black", elinewidth=1, capsize=4)
    labels = [f"{n}\n(n={(m.get('tsqa') or {}).get('n', 0)})" for n, m in zip(names, models)]
    ax.set_xticks(range(len(names)), labels, rotation=25, ha="right", fontsize="small")
    ax.set_ylabel("% of questions")
    ax.set_title("temporal QA: the answer picked (values in %;\nbar: accuracy's 95% interval)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _draw_qa_by_year(fig, models: list[Mapping[str, Any]], names: list[str]) -> None:
    """Small multiples, one per model: the same stacked breakdown per question year."""
    with_years = [(m, n) for m, n in zip(models, names) if (m.get("tsqa") or {}).get("by_year")]
    ncols = min(3, len(with_years))
    nrows = math.ceil(len(with_years) / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for k, (m, name) in enumerate(with_years):
        ax = axes[k // ncols][k % ncols]
        by_year = m["tsqa"]["by_year"]
        years = sorted(by_year, key=int)
        _stacked_bars(ax, years, [_qa_shares(by_year[y]) for y in years], min_label=0.12,
                      fontsize=6, width=0.8)
        ax.set_xticks(range(len(years)),  # the year, and below it how many questions
                      [f"{y[2:] if len(years) > 6 else y}\n{by_year[y].get('n', '')}"
                       for y in years], fontsize=7)
        ax.set_title(name, fontsize="small")
        if k % ncols == 0:
            ax.set_ylabel("% of questions")
    for k in range(len(with_years), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.suptitle("by question year ('13 = 2013; below it, the number of questions), each "
                 "question as of "
                 + ("the query date" if any(m.get("query_date") for m, _ in with_years)
                    else "its own date"), fontsize="medium")


def _draw_perplexity(ax, models: list[Mapping[str, Any]], names: list[str]) -> None:
    years = sorted({y for m in models for y in (m.get("perplexity") or {})}, key=int)
    for m, name in zip(models, names):
        vals = [(m.get("perplexity") or {}).get(y) for y in years]
        details = (m.get("perplexity_details") or {}).get("years") or {}
        cis = [(details.get(y) or {}).get("interval") for y in years]
        ys = [math.nan if v is None else v for v in vals]
        # each year's 95% interval over its held-out windows, where it has one
        err = [[v - ci[0] if ci and v is not None else 0.0 for v, ci in zip(vals, cis)],
               [ci[1] - v if ci and v is not None else 0.0 for v, ci in zip(vals, cis)]]
        ax.errorbar([int(y) for y in years], ys, yerr=err, marker="o", capsize=2,
                    label=name + ("" if m.get("point_in_time", True) else
                                  " (not point-in-time)"))
    ax.set_xticks([int(y) for y in years])
    ax.set_xlabel("data year")
    finite = [v for m in models for v in (m.get("perplexity") or {}).values() if v]
    if finite and max(finite) > 10 * min(finite):  # a weak baseline would flatten the rest
        ax.set_yscale("log")
    ax.set_ylabel("perplexity" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_title("held-out perplexity")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def plot_compare(
    path: Path, result: Mapping[str, Any], panels: tuple[str, ...] = ("qa", "perplexity")
) -> Any:
    """Temporal QA as stacked bars per model (correct / past / future / irrelevant, with
    values) and the same per question year, one small panel per model; perplexity by
    data year (`panels` picks either or both)."""
    models = result["models"]
    names = [m.get("label", m["entry"]) for m in models]
    has_qa = "qa" in panels and any(m.get("tsqa") for m in models)
    has_ppl = "perplexity" in panels and any(m.get("perplexity") for m in models)
    by_year = has_qa and any((m.get("tsqa") or {}).get("by_year") for m in models)
    n_top = int(has_qa) + int(has_ppl) or 1
    n_year_rows = math.ceil(sum(1 for m in models if (m.get("tsqa") or {}).get("by_year"))
                            / 3) if by_year else 0
    top_h, year_h = 4.8, 2.6
    width = max(6.5 * n_top + 1.5, 11.0 if by_year else 0.0)
    fig = _new_figure(width, top_h + year_h * n_year_rows)
    if by_year:
        top, bottom = fig.subfigures(2, 1, height_ratios=[top_h, year_h * n_year_rows])
    else:
        top, bottom = fig, None
    axes = [top.add_subplot(1, n_top, k + 1) for k in range(n_top)]
    k = 0
    if has_qa:
        _draw_qa_overall(axes[k], models, names)
        k += 1
    if has_ppl:
        _draw_perplexity(axes[k], models, names)
    if not (has_qa or has_ppl):
        axes[0].text(0.5, 0.5, "nothing evaluated", ha="center", va="center")
    if bottom is not None:
        _draw_qa_by_year(bottom, models, names)
    _save_png(fig, path)
    return fig  # (for tests: its artists)


def plot_report(path: Path, report: Mapping[str, Any]) -> None:
    """The plot of one evaluation: the matrix heatmap when there is one, else by year."""
    qd = report["query_date"]
    when = f"as of {qd}" if qd else "each year as of itself"
    if report.get("matrix"):
        plot_matrix(path, report["matrix"], f"{report['name']}: perplexity, query date x data year")
    elif report.get("perplexity"):
        plot_perplexity(path, {report["name"]: report["perplexity"]},
                        f"{report['name']}: perplexity by data year ({when})")
    else:
        t = report["tsqa"]
        plot_compare(path, {"models": [{"entry": report["name"], "tsqa": t, "perplexity": None}]})



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
