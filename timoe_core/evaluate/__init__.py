"""Evaluation: perplexity per data year as of a query date, temporal QA, reports.

    model = load_evaluated_model("runs/timoe", "avg")
    ppl = evaluate_perplexity(model, "data/", query_date="2016")
    qa = score_tsqa(model, load_tsqa("builtin"))
    report = evaluation_report(model, model_path="runs/timoe", query_date="2016",
                               perplexity=ppl, tsqa=qa)

`compare_models(entries, data_dir, tsqa_source)` runs several models side by side.
"""

from timoe_core.evaluate.compare import compare_models, compare_table, parse_entry
from timoe_core.evaluate.evaluated_model import EvaluatedModel
from timoe_core.evaluate.models import load_evaluated_model
from timoe_core.evaluate.perplexity import (
    PerplexityMatrix,
    PerplexityResult,
    evaluate_perplexity,
    perplexity_matrix,
)
from timoe_core.evaluate.plots import plot_compare, plot_report
from timoe_core.evaluate.report import evaluation_report, write_report
from timoe_core.evaluate.tsqa import TSQAFields, TSQAResult, load_tsqa, score_tsqa

__all__ = [
    "EvaluatedModel",
    "PerplexityMatrix",
    "PerplexityResult",
    "TSQAFields",
    "TSQAResult",
    "compare_models",
    "compare_table",
    "evaluate_perplexity",
    "evaluation_report",
    "load_evaluated_model",
    "load_tsqa",
    "parse_entry",
    "perplexity_matrix",
    "plot_compare",
    "plot_report",
    "score_tsqa",
    "write_report",
]
