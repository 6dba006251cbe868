"""Several models on the same data, side by side: the paper's comparison table.

An entry is `PATH` or `PATH:STRATEGY`: `runs/timoe` (the bundle's own strategy),
`runs/timoe:learned-avg`, `runs/timoe:expert:2016` (one slice's expert), `runs/dense`
(a dense run dir). Every model is scored on the same held-out windows and the same
TSQA items, loaded one at a time so only one model is in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from timoe_core.errors import TimoeError
from timoe_core.evaluate.evaluated_model import model_warnings
from timoe_core.evaluate.intervals import mean_perplexity_interval
from timoe_core.evaluate.models import load_evaluated_model, parse_strategy
from timoe_core.evaluate.perplexity import evaluate_perplexity
from timoe_core.evaluate.report import (
    Table,
    evaluation_report,
    fmt_ppl,
    pct,
    ppl_cell,
    stale_cell,
    tsqa_rate_cell,
)
from timoe_core.evaluate.tsqa import TSQAFields, TSQAResult, load_tsqa, score_tsqa
from timoe_core.timeslices import AnswerCutoffs

# progress(description, done, total)
CompareProgress = Callable[[str, int, int], None]

_ENTRY_RE = re.compile(r"^(?P<path>.+?):(?P<strategy>avg|learned-avg|coadapt|dense|expert:\d{4})$")


def parse_entry(entry: str) -> tuple[Path, str | None]:
    """`PATH[:STRATEGY]` -> (path, strategy or None). A path that exists as written wins."""
    text = entry.strip()
    if not text:
        raise TimoeError("empty --model entry: give PATH or PATH:STRATEGY")
    if Path(text).exists():
        return Path(text), None
    m = _ENTRY_RE.match(text)
    if text.startswith("hf:"):  # a hub reference: resolved (and checked) when loaded
        return (Path(m.group("path")), m.group("strategy")) if m else (Path(text), None)
    if m:
        path, strategy = Path(m.group("path")), m.group("strategy")
    elif ":" in text:
        head, strategy = text.split(":", 1)
        path = Path(head)
    else:
        raise TimoeError(f"--model {entry!r} does not exist: give a bundle, run dir or "
                         "folder of runs, optionally followed by :STRATEGY")
    parse_strategy(strategy)  # unknown strategy: a clear error before any work
    if not path.exists():
        raise TimoeError(f"--model {entry!r}: {path} does not exist")
    return path, strategy


def compare_models(
    entries: Sequence[str],
    data_dir: Path | None,
    tsqa_source: str | None,
    *,
    query_date: str | None = None,
    policy: str | None = None,
    answer_cutoffs: AnswerCutoffs = "any",
    max_docs: int | None = None,
    max_items: int | None = None,
    batch_size: int = 8,
    tsqa_batch_items: int = 16,
    seq_len: int | None = None,
    fields: TSQAFields = TSQAFields(),
    device: str | torch.device = "auto",
    amp: bool | None = None,
    progress: CompareProgress | None = None,
) -> dict[str, Any]:
    """Evaluate every entry on the same data; one report per model plus a shared summary.

    Returns {"query_date", "data", "tsqa_source", "common_years", "common_items",
    "models": [report, ...]} where each report is `evaluation_report`'s document plus
    "entry" and "perplexity_mean" (the mean over `common_years`, the data years every
    model scored). Models are compared on the same footing: "tsqa" covers only the
    `common_items` every model could answer at their dates (a mixture cannot answer
    before its first expert); a model that scored more keeps its own under "tsqa_own".
    """
    if not entries:
        raise TimoeError("give at least one --model to compare")
    if data_dir is None and tsqa_source is None:
        raise TimoeError("nothing to compare on: give --data DATA_DIR and/or --tsqa SOURCE")
    parsed = [parse_entry(e) for e in entries]  # every entry checked before any work
    items = load_tsqa(tsqa_source, fields=fields, max_items=max_items) if tsqa_source else None

    reports: list[dict[str, Any]] = []
    qa_results: list[TSQAResult] = []  # one per model when there are items, else none
    for entry, label, (path, strategy) in zip(entries, short_labels(entries), parsed):
        model = load_evaluated_model(path, strategy, policy=policy, device=device, amp=amp,
                                     answer_cutoffs=answer_cutoffs)
        ppl = qa = None
        if data_dir is not None:
            cb = (lambda d, t, e=entry: progress(f"{e}: perplexity", d, t)) if progress else None
            ppl = evaluate_perplexity(model, data_dir, query_date=query_date, max_docs=max_docs,
                                      batch_size=batch_size, seq_len=seq_len, progress=cb)
        if items is not None:
            cb = (lambda d, t, e=entry: progress(f"{e}: TSQA", d, t)) if progress else None
            qa = score_tsqa(model, items, query_date=query_date, batch_items=tsqa_batch_items,
                            progress=cb)
            qa_results.append(qa)
        report = evaluation_report(model, model_path=path, query_date=query_date, perplexity=ppl,
                                   tsqa=qa, data_dir=data_dir, tsqa_source=tsqa_source)
        reports.append({"entry": entry, "label": label, **report,
                        "warnings": model_warnings(model, query_date)})
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    common: list[str] = []
    if data_dir is not None:
        years = [{y for y, v in r["perplexity"].items() if v is not None} for r in reports]
        common = sorted(set.intersection(*years), key=int) if years else []
    for r in reports:
        vals = [r["perplexity"][y] for y in common]
        r["perplexity_mean"] = sum(vals) / len(vals) if vals else None
        # a mean over len(common) years, each on its own held-out windows; its interval
        # says how much another draw of those windows could move it
        details = [r["perplexity_details"]["years"][y] for y in common]
        ci = mean_perplexity_interval(vals, [d["nll_se"] for d in details])
        r["perplexity_mean_years"] = len(common)
        r["perplexity_mean_windows"] = sum(d["windows"] for d in details)
        r["perplexity_mean_interval"] = list(ci) if ci else None
    # TSQA likewise over the items every model scored (a mixture skips the items dated
    # before its first expert); each model's own full result stays under "tsqa_own".
    common_items: set[int] = set()
    if items is not None:
        common_items = set.intersection(*(set(q.indices) for q in qa_results))
        for r, q in zip(reports, qa_results):
            if len(common_items) < q.n:
                r["tsqa_own"] = r["tsqa"]
                r["tsqa"] = q.restricted(
                    common_items, "left out: not every compared model can answer it at its date"
                ).to_dict()
    return {
        "query_date": query_date,
        "data": str(data_dir) if data_dir is not None else None,
        "tsqa_source": tsqa_source,
        "common_years": common,
        "common_items": len(common_items) if items is not None else None,
        "models": reports,
    }


def compare_table(result: dict[str, Any], *, per_year: bool = True) -> Table:
    """Side by side, one column per model: perplexity (mean over the common years with
    its 95% interval, then each year unless not `per_year`), TSQA items, accuracy (raw,
    normalised) and error rates by label, each rate with its count and 95% Wilson
    interval.

    Perplexities of the models that are not point-in-time (a dense model that read every
    year, the inclusive rule) sit in rows of their own, labelled so: they have read text
    after the year they are scored on and are not comparable with the others."""
    models = result["models"]
    headers = ["", *[m["label"] for m in models]]
    rows = [["strategy", *[m["strategy"] for m in models]]]
    if result["data"] is not None:
        years = sorted({y for m in models for y in m["perplexity"]}, key=int)
        n_years = len(result["common_years"])
        for pit in (True, False):
            if not any(bool(m.get("point_in_time")) == pit for m in models):
                continue
            kind = "point-in-time" if pit else "NOT point-in-time (read later years)"

            def cells(value, models=models, pit=pit):
                return [value(m) if bool(m.get("point_in_time")) == pit else "" for m in models]

            rows.append([f"ppl, mean of {n_years} years [95% CI], {kind}",
                         *cells(lambda m: ppl_cell(m["perplexity_mean"],
                                                   m.get("perplexity_mean_interval"))
                                + (" [no CI: a year has 1 window]"
                                   if m["perplexity_mean"] is not None
                                   and not m.get("perplexity_mean_interval") else ""))])
            if per_year:
                rows += [[f"ppl {y}" + ("" if pit else ", not point-in-time"),
                          *cells(lambda m, y=y: fmt_ppl(m["perplexity"].get(y)))]
                         for y in years]
    if result["tsqa_source"] is not None:
        qa = [m["tsqa"] for m in models]
        rows.append(["QA items", *[str(t["n"]) for t in qa]])
        rows.append(["QA accuracy (k/n) [95% CI]", *[tsqa_rate_cell(t, "accuracy") for t in qa]])
        rows.append(["QA acc (norm)", *[pct(t["accuracy_norm"]) for t in qa]])
        rows += [[f"{lab} err", *[tsqa_rate_cell(t, lab) for t in qa]]
                 for lab in ("past", "future", "irrelevant")]
        if any((t.get("after_change") or {}).get("n") for t in qa):
            rows.append(["stale answers after a change that year", *[stale_cell(t) for t in qa]])
    return headers, rows


def short_labels(entries: Sequence[str]) -> list[str]:
    """`runs/x/bundle:avg` -> `bundle:avg`; the whole entry where short ones would clash."""
    short = []
    for e in entries:
        path, strategy = parse_entry(e)
        short.append(path.name + (f":{strategy}" if strategy else ""))
    return short if len(set(short)) == len(short) else list(entries)
