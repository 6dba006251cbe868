"""PNG plots of evaluation reports: perplexity by data year, the query-date x data-year
matrix, and the comparison of several models (TSQA answers, perplexity).

matplotlib's Agg canvas is used directly (headless, no global backend switch), and every
file is written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from timoe_core.evaluate.tsqa import ERROR_LABELS
from timoe_core.io import atomic_path


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
