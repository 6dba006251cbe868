"""The configs of the applications: `evaluate` and `compare`, `generate`, `demo`,
`export` and `import`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from timoe_core.config.fields import (
    DEVICE_HELP,
    MAX_SEED,
    DeviceName,
    StrictModel,
    cli,
    parse_assignments,
    refuse_ignored,
)
from timoe_core.timeslices import AnswerCutoffs, CutoffEvery

_MODEL_HELP = "TiMoE bundle, expert/dense run dir, or folder of expert run dirs."
_STRATEGY_HELP = ("avg | learned-avg | coadapt | expert:YEAR | dense (a dense run's final, "
                  "all-years weights) | dense-series (its snapshots, leak-free) "
                  "(default: the bundle's own).")
_POLICY_HELP = "Eligibility: point-in-time | strict (its alias) | inclusive (default: the bundle's)."


class EvaluateConfig(StrictModel):
    """`timoe evaluate` (one model) and `timoe compare` (`models`, several)."""

    model: Path | None = Field(None, description=_MODEL_HELP)
    models: list[str] = Field(  # compare: PATH or PATH:STRATEGY each
        default_factory=list, json_schema_extra=cli(flag="--model"),
        description="PATH or PATH:STRATEGY, repeated: a bundle (runs/timoe, "
        "runs/timoe:learned-avg, runs/timoe:expert:2016), a dense run dir (runs/dense, or "
        "runs/dense:dense-series for its snapshots, leak-free), a folder of runs.",
    )
    strategy: str | None = Field(None, description=_STRATEGY_HELP)
    query_date: str | None = Field(
        None, description="Read everything as of DATE (YYYY, YYYY-MM or YYYY-MM-DD); "
        "default: each document's own year, each question's own date.",
    )
    policy: Literal["point-in-time", "strict", "inclusive"] | None = Field(
        None, description=_POLICY_HELP
    )
    answer_cutoffs: AnswerCutoffs = Field(
        "any", description="any | month | quarter | year: answer as of the last such period "
        "end on or before the query date, from the artefacts (expert and router snapshots) "
        "usable then, so a monthly build answers as a yearly one would (default any: the "
        "query date itself).",
    )
    data: Path | None = Field(None, description="Prepared data dir: val perplexity.")
    tsqa: str | None = Field(
        None, description="Temporal QA: builtin | FILE.json/.jsonl | hf:NAME[:SPLIT]."
    )
    tsqa_question_field: str = Field("question", description="TSQA field of the question.")
    tsqa_choices_field: str = Field("choices", description="TSQA field of the choices.")
    tsqa_answer_field: str = Field("answer", description="TSQA field of the correct answer.")
    tsqa_labels_field: str = Field(
        "labels", description="TSQA field of the choices' labels (correct/past/future/irrelevant)."
    )
    tsqa_year_field: str = Field("year", description="TSQA field of the question's year.")
    # When a choice is an object rather than a string: where its text and label are.
    tsqa_choice_text_field: str = "text"
    tsqa_choice_label_field: str = "label"
    json_out: Path | None = Field(
        None, description="Write the report as JSON.", json_schema_extra=cli(flag="--json")
    )
    plot: Path | None = Field(None, description="Write a PNG plot.")
    matrix: bool = Field(
        False, description="Also a query date x data year perplexity matrix.",
        json_schema_extra=cli(flag="--matrix/--no-matrix"),
    )
    tsqa_schema: Literal["timoe", "tsqa-release"] | None = Field(
        None, description="Named TSQA schema: timoe (default) or tsqa-release (the published "
        "TSQA's field names).")
    tsqa_field: dict[str, str] = Field(
        default_factory=dict, json_schema_extra=cli(repeat=True),
        description="PART=KEY, repeatable: where a record keeps question, choices, text, "
        "label, labels, answer or year (e.g. choices=options); over the schema and the "
        "*_field options.")
    tsqa_label: dict[str, str] = Field(
        default_factory=dict, json_schema_extra=cli(repeat=True),
        description="OURS=THEIRS, repeatable: the source's value for correct, past, future or "
        "irrelevant (e.g. correct=gold).")
    lm_eval_tasks: list[str] | None = Field(
        None, description="Also run these lm-evaluation-harness tasks (comma separated, e.g. "
        "arc_easy,hellaswag; needs timoe[eval]) and add their scores.")
    lm_eval_include_path: Path | None = Field(
        None, description="Folder of extra lm-eval task YAMLs.")
    lm_eval_limit: int | None = Field(None, ge=1, description="Documents per lm-eval task.")
    lm_eval_date_field: str | None = Field(
        None, description="Field of the lm-eval docs giving each document's date.")
    # Query dates of the matrix rows; default: every data year.
    matrix_query_dates: list[str] | None = None
    max_docs: int | None = Field(
        None, ge=1, description="At most N held-out windows per data year (fixed subsample)."
    )
    max_items: int | None = Field(None, ge=1, description="At most N TSQA items.")
    batch_size: int = Field(8, ge=1, description="Windows per forward.")
    tsqa_batch_size: int = Field(16, ge=1, description="TSQA items per forward (4 rows each).")
    seq_len: int | None = Field(
        None, ge=1, description="Window length in tokens (default: the model's context or "
        "the data's, the shorter).",
    )
    amp: bool | None = Field(  # None: bf16 autocast on CUDA, fp32 on CPU
        None, description="bf16 autocast (CUDA).", json_schema_extra=cli(flag="--amp/--no-amp")
    )
    device: DeviceName = Field("auto", description=DEVICE_HELP)


    @field_validator("tsqa_field", "tsqa_label", mode="before")
    @classmethod
    def _assignments(cls, value: Any) -> Any:
        """Flags give ['a=b', ...]; a config file gives a mapping."""
        return parse_assignments(value) if isinstance(value, (list, tuple)) else value

    @field_validator("lm_eval_tasks", mode="before")
    @classmethod
    def _task_list(cls, value: Any) -> Any:
        """`--lm-eval-tasks a,b` (and repeated flags) -> ['a', 'b']."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [t.strip() for v in value for t in str(v).split(",") if t.strip()] or None
        return value

    @model_validator(mode="after")
    def _check_ignored(self) -> EvaluateConfig:
        data = self.data is not None or bool(self.models)  # compare: checked per entry
        tsqa = self.tsqa is not None or bool(self.models)
        tasks = bool(self.lm_eval_tasks)
        refuse_ignored(self, {
            "matrix": (data, "with --data (a perplexity matrix)"),
            "matrix_query_dates": (data and self.matrix, "with --data --matrix"),
            "max_docs": (data, "with --data"),
            "max_items": (tsqa, "with --tsqa"),
            "tsqa_schema": (tsqa, "with --tsqa"),
            "tsqa_field": (tsqa, "with --tsqa"),
            "tsqa_label": (tsqa, "with --tsqa"),
            "lm_eval_include_path": (tasks, "with --lm-eval-tasks"),
            "lm_eval_limit": (tasks, "with --lm-eval-tasks"),
            "lm_eval_date_field": (tasks, "with --lm-eval-tasks"),
        })
        return self


class GenerateConfig(StrictModel):
    model: Path | None = Field(None, description=_MODEL_HELP)
    query_date: str | None = Field(
        None, description="Generate as of DATE (YYYY, YYYY-MM or YYYY-MM-DD); required for a "
        "mixture.",
    )
    prompt: str | None = Field(None, description="Text to continue (may be empty).")
    strategy: str | None = Field(None, description=_STRATEGY_HELP)
    max_new_tokens: int = Field(64, ge=1, description="At most N tokens.")
    # 0 means greedy; below 1e-3 the scaled log-probs overflow to inf (NaN probabilities).
    temperature: float = Field(1.0, ge=0.0, le=1000.0,
                               description="Sampling temperature (0: greedy).")
    top_k: int | None = Field(None, ge=1, description="Sample among the k likeliest tokens.")
    greedy: bool = Field(
        False, description="Always the likeliest token.",
        json_schema_extra=cli(flag="--greedy/--sample"),
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Sampling seed.")
    policy: Literal["point-in-time", "strict", "inclusive"] | None = Field(  # default: the bundle's
        None, description=_POLICY_HELP
    )
    use_cache: bool = Field(  # False: recompute the whole context every token (for checks)
        True, description="KV cache; --no-cache recomputes every token.",
        json_schema_extra=cli(flag="--cache/--no-cache"),
    )
    device: DeviceName = Field("auto", description=DEVICE_HELP)

    @model_validator(mode="after")
    def _check_temperature(self) -> GenerateConfig:
        sampling = "when sampling, not with --greedy (which takes the likeliest token)"
        refuse_ignored(self, {"top_k": (not self.greedy, sampling),
                              "temperature": (not self.greedy, sampling)})
        if 0.0 < self.temperature < 1e-3:
            raise ValueError(
                f"--temperature {self.temperature:g} is too small to sample with (the scaled "
                "log-probs overflow): use 0 or --greedy for greedy decoding, or at least 0.001"
            )
        return self


class DemoConfig(StrictModel):
    out: Path = Field(Path("timoe-demo"), description="Folder of every stage's output.")
    quick: bool = Field(
        False, description="A pipeline check, too small to compare models (a few minutes "
        "on a 2-core CPU).",
        json_schema_extra=cli(flag="--quick/--full"),
    )
    overwrite: bool = Field(  # start over when --out holds a demo of other settings
        False, description="Start over when --out holds a demo run with other settings.",
        json_schema_extra=cli(flag="--overwrite/--no-overwrite"),
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the corpus and every run.")
    device: DeviceName = Field("auto", description=DEVICE_HELP)
    keep_checkpoints: bool = Field(  # a finished demo stage is never resumed
        False, description="Keep each finished stage's trainer checkpoints (optimizer "
        "state, several times the weights; by default removed once the stage is done).",
    )
    cutoff_every: CutoffEvery = Field(
        "year", description="month | quarter | year: the period of every training stage. "
        "month: a cutoff at each month end, one pass over each month's windows (averaged "
        "bfloat16 snapshots, no extra step; router snapshots and adapted experts stored "
        "as deltas), about 4 times the disk (4.0 GB); the stale-answer table then compares "
        "month-end with year-end artefacts.",
    )


# ------------------------------------------------------------------ interop


class ExportConfig(StrictModel):
    """`timoe export`: timoe models as folders other tools open."""

    model: Path | None = Field(None, description="Run dir, TiMoE bundle, folder of expert run "
                               "dirs, or hf:ORG/NAME.")
    format: Literal["hf"] = Field("hf", description="hf: a transformers GPT2LMHeadModel folder "
                                  "with the GPT-2 tokenizer files.")
    out: Path | None = Field(None, description="Folder to write (must not exist, or be empty).")
    query_date: str | None = Field(None, description="With a bundle or folder: export only the "
                                   "experts usable as of DATE (default: every expert).")
    policy: Literal["inclusive", "strict"] | None = Field(
        None, description="Eligibility for --query-date (default: the bundle's).")


class ImportConfig(StrictModel):
    """`timoe import`: other checkpoints as timoe run dirs."""

    format: Literal["gptbase", "hf"] | None = Field(
        None, description="gptbase: the paper code's GPTBase folder (config.json + weights); "
        "hf: a transformers GPT2LMHeadModel folder.")
    source: str | None = Field(None, description="The folder to read, or hf:ORG/NAME.")
    slice: str | None = Field(None, description="The time slice the model was trained on, "
                              "e.g. 2015-2016 (one year: 2015-2015).")
    data_cutoff: str | None = Field(None, description="Latest date of any text the model saw, "
                                    "YYYY[-MM[-DD]] (default: the slice's last day).")
    kind: Literal["expert", "dense", "base"] = Field(
        "expert", description="expert (one slice), dense (all years) or base (the years up "
        "to --data-cutoff, to start experts from with train-expert --init-from).")
    out: Path | None = Field(None, description="Run dir to write (must not exist, or be empty).")
