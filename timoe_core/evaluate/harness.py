"""lm-evaluation-harness adapter: a timoe model (a mixture as of a date, an expert, a
dense run) as the harness model `timoe`.

    pip install -e ".[eval]"
    timoe-lm-eval --model timoe --model_args model=runs/timoe,query_date=2016 \\
        --tasks arc_easy --include_path my_tasks/
    timoe evaluate --model runs/timoe --query-date 2016 --lm-eval-tasks arc_easy --json ev.json

`timoe-lm-eval` is lm-eval's own command line with this module imported first: lm-eval
0.4 finds models only in its registry, which has no hook for other packages, so the
bare `lm_eval --model timoe` does not see the model (in Python: import this module,
then `lm_eval.simple_evaluate(model="timoe", ...)`).

model_args: `model` (a bundle, run dir, folder of runs or hf:ORG/NAME), `query_date`
(every document as of that date) or `date_field` (each document as of the date in
that field of the task's docs, e.g. `date_field=year`), `strategy`, `policy`,
`device`, `batch_size`, `greedy` (false skips the is-greedy pass).

Scoring is timoe's own TSQA scoring: the context is `<EOT> + context` (EOT marks a
document start, as in training), the continuation its own tokens (whitespace that
ends the context moves to the continuation, as lm-eval does), summed log-likelihood
through the mixture's target log-probs. So a multiple-choice task over the same items
gives `acc` equal to timoe's `accuracy`. lm-eval's `acc_norm` divides by the
continuation's length in characters (bytes), timoe's `accuracy_norm` by its tokens:
the two can pick different choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from timoe_core.errors import TimoeError
from timoe_core.evaluate.continuations import (
    batches_by_date,
    continuation_batch,
    continuation_log_likelihoods,
)
from timoe_core.evaluate.evaluated_model import EvaluatedModel, MixtureModel, SingleModel
from timoe_core.evaluate.models import load_evaluated_model
from timoe_core.model.gpt import GPT
from timoe_core.model.mixture import TiMoE
from timoe_core.timeslices import parse_query_date
from timoe_core.tokenizer import get_tokenizer

MODEL_NAME = "timoe"
INSTALL_HINT = "pip install 'timoe[eval]' (lm-eval)"

try:
    from lm_eval.api.model import LM as _LMBase
    from lm_eval.api.registry import register_model as _register
except ImportError:  # the extra is not installed: the module still imports
    _LMBase = object
    _register = None


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def _network(model: EvaluatedModel) -> TiMoE | GPT:
    """The network behind an evaluated model: its mixture, or its one set of weights."""
    if isinstance(model, MixtureModel):
        return model.mix
    if isinstance(model, SingleModel):
        return model.gpt
    raise TypeError(f"no network behind a {type(model).__name__}")


class TimoeLM(_LMBase):
    """The harness model `timoe` (see the module docstring)."""

    def __init__(self, model: str | EvaluatedModel | None = None, query_date: Any = None,
                 date_field: str | None = None, strategy: str | None = None,
                 policy: str | None = None, device: str | None = None,
                 batch_size: int | str | None = None, greedy: Any = True,
                 max_batch_size: int | str | None = None) -> None:
        # max_batch_size: lm-eval passes it with batch_size and device; a fixed batch
        # (batch_size) is what timoe runs, so it has nothing to cap.
        if _LMBase is not object:
            super().__init__()
        if model is None:
            raise TimoeError("the timoe harness model needs model_args model=PATH")
        if isinstance(model, EvaluatedModel):
            self.model = model
        else:
            self.model = load_evaluated_model(str(model), strategy, policy=policy,
                                              device=device or "auto")
        if query_date is not None and date_field is not None:
            raise TimoeError("give query_date or date_field in model_args, not both")
        self.query_date = None if query_date is None else parse_query_date(str(query_date))
        self.date_field = date_field
        if self.model.dated and self.query_date is None and self.date_field is None:
            raise TimoeError(
                "a TiMoE mixture answers as of a date: give model_args query_date=YYYY (every "
                "document) or date_field=FIELD (each document's own date, e.g. date_field=year)"
            )
        self.batch_rows = 8 if batch_size in (None, "auto") else max(1, int(str(batch_size)
                                                                          .split(":")[0]))
        self.greedy = _bool(greedy)
        self.tok = get_tokenizer(str(self.model.tokenizer.get("name", "gpt2")))

    @classmethod
    def create_from_arg_string(cls, arg_string: str,
                               additional_config: dict[str, Any] | None = None) -> TimoeLM:
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        check_model_args(args)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**(args | extra))

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any],
                            additional_config: dict[str, Any] | None = None) -> TimoeLM:
        check_model_args(arg_dict)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**(dict(arg_dict) | extra))

    # ------------------------------------------------------------ dates and tokens

    def _date_of(self, request: Any):
        if self.date_field is None:
            return self.query_date
        doc = getattr(request, "doc", None) or {}
        if self.date_field not in doc:
            keys = ", ".join(repr(k) for k in doc) or "none"
            raise TimoeError(f"lm-eval task {getattr(request, 'task_name', '?')}: document "
                             f"{getattr(request, 'doc_id', '?')} has no field "
                             f"{self.date_field!r} for date_field (its fields: {keys})")
        try:
            return parse_query_date(doc[self.date_field])
        except TimoeError as exc:
            raise TimoeError(f"lm-eval task {getattr(request, 'task_name', '?')}: document "
                             f"{getattr(request, 'doc_id', '?')}: {exc}") from None

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        moved = len(context) - len(context.rstrip())
        if moved:
            context, continuation = context[:-moved], context[-moved:] + continuation
        ctx = [self.tok.eot_token] + self.tok.encode(context)
        cont = self.tok.encode(continuation)
        if not cont:
            raise TimoeError(f"lm-eval asked for the likelihood of an empty continuation "
                             f"after {context[-40:]!r}")
        return ctx, cont

    # ---------------------------------------------------------------- scoring

    def _score(self, rows: Sequence[tuple[list[int], list[int], Any]]
               ) -> list[tuple[float, bool]]:
        """(summed log-likelihood, continuation is greedy) for (ctx, cont, date) rows."""
        m = self.model
        block = m.block_size
        out: dict[int, tuple[float, bool]] = {}
        order = sorted(range(len(rows)), key=lambda i: (str(rows[i][2]),
                                                        -len(rows[i][0]) - len(rows[i][1])))
        eot = self.tok.eot_token
        date_of = {i: rows[i][2] for i in order}
        with torch.inference_mode():
            for chunk in batches_by_date(order, date_of, self.batch_rows):  # one date each
                seqs = []
                for i in chunk:
                    ctx, cont, _ = rows[i]
                    if len(cont) > block:
                        raise TimoeError(f"a continuation of {len(cont)} tokens is longer than "
                                         f"the model's block_size {block}")
                    seqs.append(((ctx + cont)[-(block + 1):], len(cont)))
                inp, tgt, mask = continuation_batch(seqs, eot)
                qd = rows[chunk[0]][2]
                sums = continuation_log_likelihoods(m, inp, tgt, mask, qd)
                greedy = self._greedy(inp, tgt, mask, qd) if self.greedy else [False] * len(chunk)
                for j, i in enumerate(chunk):
                    out[i] = (float(sums[j]), bool(greedy[j]))
        return [out[i] for i in range(len(rows))]

    def _greedy(self, inp: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor, qd: Any
                ) -> list[bool]:
        dev = self.model.device
        net = _network(self.model)
        if isinstance(net, TiMoE):
            full = net.mixture_log_probs(inp.to(dev), qd)
        else:
            full = net.log_probs(inp.to(dev))
        best = full.argmax(-1).cpu()
        return [bool(((best[r] == tgt[r]) | ~mask[r]).all()) for r in range(len(inp))]

    # ---------------------------------------------------------- the harness API

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False
                      ) -> list[tuple[float, bool]]:
        rows = []
        for req in requests:
            context, continuation = req.args[0], req.args[1]
            rows.append((*self._encode_pair(context, continuation), self._date_of(req)))
        return self._score(rows)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False
                              ) -> list[float]:
        """The whole text's log-likelihood in windows of block_size (each window's
        first predictions see the previous window's end as context)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        rows, owner = [], []
        for k, req in enumerate(requests):
            tokens = self.tok.encode(req.args[0])
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    tokens, prefix_token=self.tok.eot_token, max_seq_len=self.model.block_size,
                    context_len=1)):
                rows.append((list(ctx), list(cont), self._date_of(req)))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (ll, _) in zip(owner, self._score(rows)):
            totals[k] += ll
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from timoe_core.generate import generate_tokens

        outs = []
        for req in requests:
            context, kwargs = req.args[0], dict(req.args[1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 64))
            m = self.model
            net = _network(m)
            prompt = ([self.tok.eot_token] + self.tok.encode(context))[-(m.block_size - 1):]
            result = generate_tokens(net, prompt, query_date=self._date_of(req),
                                     max_new_tokens=max_new, greedy=True,
                                     eot_token=self.tok.eot_token)
            text = self.tok.decode(result.tokens)
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            outs.append(text)
        return outs


if _register is not None:
    _register(MODEL_NAME)(TimoeLM)

# What --model_args may set: a key outside these would be ignored, so it is refused.
MODEL_ARGS = ("model", "query_date", "date_field", "strategy", "policy", "device", "batch_size",
              "greedy")


def check_model_args(args: dict[str, Any] | Sequence[str]) -> None:
    """TimoeError naming the first model_args key the timoe model does not take."""
    unknown = [k for k in args if k not in MODEL_ARGS]
    if unknown:
        raise TimoeError(
            f"--model_args {unknown[0]}=... is not an option of the timoe model: use "
            f"{', '.join(MODEL_ARGS)}"
        )


def _model_args_in(argv: Sequence[str]) -> str | None:
    """The --model_args string of an lm-eval command line that runs `--model timoe`."""
    values: dict[str, str] = {}
    for i, arg in enumerate(argv):
        for flag in ("--model", "--model_args"):
            if arg == flag and i + 1 < len(argv):
                values[flag] = argv[i + 1]
            elif arg.startswith(flag + "="):
                values[flag] = arg[len(flag) + 1:]
    if values.get("--model") != MODEL_NAME:
        return None
    return values.get("--model_args")


# ------------------------------------------------------- `timoe evaluate` folding


def _require_lm_eval() -> None:
    if _register is None:
        raise TimoeError(f"--lm-eval-tasks needs lm-evaluation-harness: {INSTALL_HINT}")


def run_lm_eval_tasks(model: EvaluatedModel, cfg: Any) -> dict[str, Any]:
    """Run cfg.lm_eval_tasks through the harness on `model`; {task: {metric: value}}."""
    _require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager

    include = cfg.lm_eval_include_path
    if include is not None and not Path(include).is_dir():
        raise TimoeError(f"--lm-eval-include-path {include} is not a folder of task YAMLs")
    tasks = [t.strip() for t in cfg.lm_eval_tasks if t.strip()]
    manager = None
    if include is not None:  # indexing lm-eval's own thousands of tasks takes a while
        manager = TaskManager(include_path=str(include), include_defaults=False)
        if any(t not in manager.all_tasks for t in tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=str(include) if include else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise TimoeError(f"unknown lm-eval task {unknown[0]!r}: see `lm_eval ls tasks`, or "
                         "give --lm-eval-include-path with its YAML")
    lm = TimoeLM(model, query_date=None if cfg.lm_eval_date_field else cfg.query_date,
                 date_field=cfg.lm_eval_date_field, batch_size=cfg.tsqa_batch_size * 4)
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=cfg.lm_eval_limit,
                                          task_manager=manager, log_samples=False,
                                          bootstrap_iters=0, verbosity="ERROR")
    except TimoeError:
        raise
    except Exception as exc:  # dataset downloads and task errors surface in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TimoeError(
            f"lm-eval tasks {','.join(tasks)} could not run ({type(exc).__name__}: {first}); "
            "offline, a hub dataset must be in the local cache: fetch it where there is "
            "network (hf download NAME --repo-type dataset) and set "
            "HF_DATASETS_OFFLINE=1, or write a local task YAML over a JSONL file and pass "
            "--lm-eval-include-path"
        ) from None
    scores: dict[str, Any] = {}
    for task, metrics in (results or {}).get("results", {}).items():
        clean = {}
        for key, value in metrics.items():
            if key == "alias" or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            clean[key.split(",")[0]] = float(value)  # 'acc,none' -> 'acc'
        scores[task] = clean
    return {"tasks": scores, "query_date": cfg.query_date,
            "date_field": cfg.lm_eval_date_field, "limit": cfg.lm_eval_limit}


def lm_eval_table(section: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    metrics = sorted({k for v in section["tasks"].values() for k in v})
    rows = [[task] + [f"{v[k]:.4f}" if k in v else "" for k in metrics]
            for task, v in sorted(section["tasks"].items())]
    return ["task", *metrics], rows


def run_lm_eval_cli() -> None:
    """lm-eval's own command line, with the `timoe` model registered (`timoe-lm-eval`)."""
    if _register is None:
        raise TimoeError(f"timoe-lm-eval needs lm-evaluation-harness: {INSTALL_HINT}")
    import sys

    from lm_eval.__main__ import cli_evaluate
    from lm_eval.utils import simple_parse_args_string

    arg_string = _model_args_in(sys.argv[1:])
    if arg_string is not None and not arg_string.lstrip().startswith("{"):
        check_model_args(simple_parse_args_string(arg_string))  # before lm-eval's own work
    cli_evaluate()


if __name__ == "__main__":
    run_lm_eval_cli()
