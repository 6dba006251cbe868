"""`timoe evaluate` and `timoe compare` as library calls, from the same config objects:

    from timoe_core.config import EvaluateConfig
    from timoe_core.evaluate.run import run_evaluate
    result = run_evaluate(EvaluateConfig(model="runs/timoe", data="data", tsqa="builtin"))
    result.report["tsqa"]["accuracy"]

Everything is checked before any work (TimoeError for bad input); outputs (--json,
--plot) are written atomically, the resolved config beside them. `progress(description)`
gives a `(done, total)` callback per stage, for progress bars.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timoe_core.config import EvaluateConfig, is_saved_config, save_config
from timoe_core.errors import TimoeError
from timoe_core.evaluate.compare import compare_models, parse_entry
from timoe_core.evaluate.evaluated_model import model_warnings
from timoe_core.evaluate.models import load_evaluated_model
from timoe_core.evaluate.perplexity import evaluate_perplexity, perplexity_matrix
from timoe_core.evaluate.plots import plot_compare, plot_report
from timoe_core.evaluate.report import evaluation_report, is_json_report, is_png, write_report
from timoe_core.evaluate.tsqa import (
    TSQAFields,
    TSQAResult,
    load_tsqa,
    score_tsqa,
    tsqa_fields_from_config,
)
from timoe_core.io import check_output_files, check_output_path, check_writable_dir
from timoe_core.lock import output_lock
from timoe_core.timeslices import parse_query_date

Progress = Callable[[str], Callable[[int, int], None]]


def _no_progress(description: str) -> Callable[[int, int], None]:
    return lambda done, total: None


@dataclass
class EvaluationResult:
    report: dict[str, Any]  # the `evaluate --json` document (or the comparison's)
    tsqa: TSQAResult | None = None
    perplexity: Any = None  # PerplexityResult (evaluate --data)
    matrix: Any = None  # PerplexityMatrix (evaluate --matrix)
    written: list[tuple[str, Path]] = field(default_factory=list)  # ("report"|"plot", path)
    warnings: list[str] = field(default_factory=list)  # `models.model_warnings`, one line each


def tsqa_fields(cfg: EvaluateConfig) -> TSQAFields:
    """Where `cfg`'s TSQA source keeps each part (schema, *_field options, --tsqa-field)."""
    return tsqa_fields_from_config(cfg)


def check_outputs(cfg: EvaluateConfig) -> None:
    """Bad output paths are bad input, found before any work."""
    if cfg.plot is not None and cfg.plot.suffix.lower() != ".png":
        raise TimoeError(f"--plot {cfg.plot} must name a .png file")
    for flag, path in (("--json", cfg.json_out), ("--plot", cfg.plot)):
        if path is not None and path.is_dir() and not path.is_symlink():
            raise TimoeError(f"{flag} {path} is a folder: give a file name")
        if path is not None:  # links, special files, a path under a file: before any work
            check_output_path(path, flag, "file")
    inputs = {"--model": cfg.model, "--data": cfg.data}
    for i, entry in enumerate(cfg.models):
        inputs[f"--model #{i + 1}"] = parse_entry(entry)[0]
    sidecar = config_sidecar(cfg)
    if sidecar is not None:  # the resolved config beside the report: an output too
        check_output_path(sidecar, "the config file", "file")
    check_output_files({"--json": cfg.json_out, "--plot": cfg.plot, "the config file": sidecar},
                       inputs, {"--json": is_json_report, "--plot": is_png,
                                "the config file": lambda p: is_saved_config(p, EvaluateConfig)})
    for flag, path in (("--json", cfg.json_out), ("--plot", cfg.plot)):
        if path is not None:  # found now, not after the whole evaluation
            check_writable_dir(path.parent if path.exists() else path, flag)


def config_sidecar(cfg: EvaluateConfig) -> Path | None:
    """Where the resolved config goes: `<stem>.config.yaml` beside the JSON (else the PNG)."""
    main = cfg.json_out if cfg.json_out is not None else cfg.plot
    return None if main is None else main.parent / f"{main.stem}.config.yaml"


def write_outputs(
    cfg: EvaluateConfig, report: dict[str, Any], plot: Callable[[Path, dict], None]
) -> list[tuple[str, Path]]:
    """JSON and PNG, each atomically and under its write lock; the resolved config beside
    the JSON (else the PNG)."""
    written: list[tuple[str, Path]] = []
    with ExitStack() as locks:
        for flag, path in (("--json", cfg.json_out), ("--plot", cfg.plot)):
            if path is not None:
                locks.enter_context(output_lock(path, flag))
        if cfg.json_out is not None:
            write_report(cfg.json_out, report, cfg)
            written.append(("report", cfg.json_out))
        if cfg.plot is not None:
            plot(cfg.plot, report)
            if cfg.json_out is None:
                save_config(cfg, cfg.plot.parent, f"{cfg.plot.stem}.config.yaml")
            written.append(("plot", cfg.plot))
    return written


def run_evaluate(
    cfg: EvaluateConfig, progress: Progress | None = None, warn: Callable[[str], None] | None = None
) -> EvaluationResult:
    """Perplexity per data year and/or temporal QA of `cfg.model`, as `cfg` says; `warn`
    hears each of `models.model_warnings` as soon as the model is loaded."""
    task = progress or _no_progress
    if cfg.model is None:
        raise TimoeError("--model is required: a TiMoE bundle, a run dir or a folder of runs")
    if cfg.data is None and cfg.tsqa is None and not cfg.lm_eval_tasks:
        raise TimoeError(
            "nothing to evaluate: give --data DATA_DIR, --tsqa SOURCE and/or --lm-eval-tasks"
        )
    if cfg.matrix and cfg.data is None:
        raise TimoeError("--matrix needs held-out text: give --data DATA_DIR")
    check_outputs(cfg)
    if cfg.query_date is not None:
        parse_query_date(cfg.query_date)

    m = load_evaluated_model(cfg.model, cfg.strategy, policy=cfg.policy, device=cfg.device,
                             amp=cfg.amp, answer_cutoffs=cfg.answer_cutoffs)
    if cfg.query_date is not None:
        m.eligible_experts(cfg.query_date)  # no expert that early: exit 2, naming the first date
    warnings = model_warnings(m, cfg.query_date)
    if warn is not None:
        for line in warnings:
            warn(line)
    items = (load_tsqa(cfg.tsqa, fields=tsqa_fields(cfg), max_items=cfg.max_items)
             if cfg.tsqa else None)

    ppl = mat = qa = None
    if cfg.data is not None:
        if cfg.matrix:
            mat, ppl = perplexity_matrix(
                m, cfg.data, query_dates=cfg.matrix_query_dates, query_date=cfg.query_date,
                max_docs=cfg.max_docs, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                progress=task("perplexity matrix"))
        else:
            ppl = evaluate_perplexity(
                m, cfg.data, query_date=cfg.query_date, max_docs=cfg.max_docs,
                batch_size=cfg.batch_size, seq_len=cfg.seq_len, progress=task("perplexity"))
    if items is not None:
        qa = score_tsqa(m, items, query_date=cfg.query_date, batch_items=cfg.tsqa_batch_size,
                        progress=task("TSQA"))

    report = evaluation_report(m, model_path=cfg.model, query_date=cfg.query_date, perplexity=ppl,
                               tsqa=qa, matrix=mat, data_dir=cfg.data, tsqa_source=cfg.tsqa)
    report["warnings"] = warnings
    if cfg.lm_eval_tasks:
        from timoe_core.evaluate.harness import run_lm_eval_tasks  # needs timoe[eval]

        report["lm_eval"] = run_lm_eval_tasks(m, cfg)
    return EvaluationResult(report, qa, ppl, mat, write_outputs(cfg, report, plot_report),
                            warnings)


def run_compare(cfg: EvaluateConfig, progress: Progress | None = None) -> EvaluationResult:
    """Every model of `cfg.models` (PATH[:STRATEGY]) on the same data, side by side."""
    task = progress or _no_progress
    if not cfg.models:
        raise TimoeError("give at least one --model PATH[:STRATEGY] (repeat it to compare)")
    check_outputs(cfg)
    if cfg.query_date is not None:
        parse_query_date(cfg.query_date)
    result = compare_models(
        cfg.models, cfg.data, cfg.tsqa, query_date=cfg.query_date, policy=cfg.policy,
        answer_cutoffs=cfg.answer_cutoffs, max_docs=cfg.max_docs, max_items=cfg.max_items,
        batch_size=cfg.batch_size,
        tsqa_batch_items=cfg.tsqa_batch_size, seq_len=cfg.seq_len, fields=tsqa_fields(cfg),
        device=cfg.device, amp=cfg.amp, progress=lambda d, done, tot: task(d)(done, tot),
    )
    warnings = [f"{m['label']}: {w}" for m in result["models"] for w in m["warnings"]]
    return EvaluationResult(result, written=write_outputs(cfg, result, plot_compare),
                            warnings=warnings)
