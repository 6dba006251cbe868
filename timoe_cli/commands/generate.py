"""`timoe generate`: sample text from a TiMoE bundle as of a query date (or one model)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
import typer

from timoe_cli.common import ConfigOption, err_console, handles_errors
from timoe_core.config import GenerateConfig, resolve_config
from timoe_core.errors import TimoeError
from timoe_core.evaluate.models import load_evaluated_model
from timoe_core.generate import GenerationResult, generate_tokens
from timoe_core.timeslices import parse_query_date
from timoe_core.tokenizer import get_tokenizer


@handles_errors
def generate(
    model: Path | None = typer.Option(
        None, "--model", help="TiMoE bundle, expert/dense run dir, or folder of expert run dirs."
    ),
    query_date: str | None = typer.Option(
        None, "--query-date", help="Generate as of DATE (YYYY, YYYY-MM or YYYY-MM-DD); "
        "required for a mixture."
    ),
    prompt: str | None = typer.Option(None, "--prompt", help="Text to continue (may be empty)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="At most N tokens."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature "
                                             "(0: greedy)."),
    top_k: int | None = typer.Option(None, "--top-k", help="Sample among the k likeliest tokens."),
    greedy: bool | None = typer.Option(
        None, "--greedy/--sample", help="Always the likeliest token."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed."),
    strategy: str | None = typer.Option(
        None, "--strategy", help="avg | learned-avg | coadapt | expert:YEAR | dense "
        "(default: the bundle's own)."
    ),
    policy: str | None = typer.Option(None, "--policy", help="Eligibility: inclusive | strict."),
    use_cache: bool | None = typer.Option(
        None, "--cache/--no-cache", help="KV cache (default); --no-cache recomputes every token."
    ),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda."),
    config: Path | None = ConfigOption,
) -> None:
    """Sample text from a TiMoE bundle as of a query date."""
    flags = dict(
        model=model, query_date=query_date, prompt=prompt, max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, greedy=greedy, seed=seed, strategy=strategy,
        policy=policy, use_cache=use_cache, device=device,
    )
    # (resolve_config, not common.load_config: its first parameter is also called `model`)
    cfg = resolve_config(GenerateConfig, config, flags)
    result, text = run_generate(cfg)
    sys.stdout.write(cfg.prompt + text + "\n")
    sys.stdout.flush()
    who = ", ".join(result.experts) if result.experts else "one model"
    stopped = "end of text" if result.stop_reason == "eot" else "max new tokens"
    err_console.print(
        f"{len(result.tokens)} tokens from {who} in {result.seconds:.2f}s "
        f"({result.tokens_per_s:.1f} tokens/s), stopped at {stopped}",
        highlight=False, markup=False,
    )


def run_generate(cfg: GenerateConfig) -> tuple[GenerationResult, str]:
    """Generate as `cfg` says; returns the result and the decoded new text."""
    if cfg.model is None:
        raise TimoeError("--model is required: a TiMoE bundle, a run dir or a folder of runs")
    if cfg.prompt is None:
        raise TimoeError("--prompt is required (it may be empty: --prompt '')")
    if cfg.query_date is not None:
        parse_query_date(cfg.query_date)
    m = load_evaluated_model(cfg.model, cfg.strategy, policy=cfg.policy, device=cfg.device)
    if m.dated:
        if cfg.query_date is None:
            raise TimoeError(
                "--query-date is required for a TiMoE mixture: generation is as of a date"
            )
        m.eligible_experts(cfg.query_date)  # none that early: exit 2, naming the first date
        net = m.mix
    else:
        net = m.gpt
        if cfg.query_date is not None:
            err_console.print(
                f"note: {m.name} is a single model; --query-date does not restrict what it knows",
                highlight=False, markup=False,
            )
    tok = get_tokenizer(str(m.tokenizer.get("name", "gpt2")))
    if tok.vocab_size > m.vocab_size:
        raise TimoeError(
            f"the {tok.name} tokenizer has {tok.vocab_size} tokens but the model only "
            f"{m.vocab_size}: model and tokenizer do not match"
        )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if m.amp and m.device.type == "cuda" else contextlib.nullcontext()
    )
    with autocast:
        result = generate_tokens(
            net, tok.encode(cfg.prompt), query_date=cfg.query_date,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
            greedy=cfg.greedy, seed=cfg.seed, eot_token=tok.eot_token, use_cache=cfg.use_cache,
            tokenizer_vocab_size=tok.vocab_size,
        )
    return result, tok.decode(result.tokens)
