"""`timoe generate` as a library call, from the same config object:

    from timoe_core.config import GenerateConfig
    from timoe_core.text_generation import run_generate
    out = run_generate(GenerateConfig(model="runs/timoe", query_date="2016", prompt="In"))
    out.text

The sampling itself is `timoe_core.generate.generate_tokens`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from timoe_core.config import GenerateConfig
from timoe_core.errors import TimoeError
from timoe_core.evaluate.evaluated_model import MixtureModel, SingleModel, model_warnings
from timoe_core.evaluate.models import load_evaluated_model
from timoe_core.generate import GenerationResult, generate_tokens
from timoe_core.model.gpt import GPT
from timoe_core.model.mixture import TiMoE
from timoe_core.timeslices import parse_query_date
from timoe_core.tokenizer import get_tokenizer


@dataclass
class GeneratedText:
    result: GenerationResult
    text: str  # the new tokens, decoded
    notes: list[str] = field(default_factory=list)  # for the user, e.g. about --query-date


def run_generate(cfg: GenerateConfig) -> GeneratedText:
    """Generate as `cfg` says (TimoeError for bad input, before any model runs)."""
    if cfg.model is None:
        raise TimoeError("--model is required: a TiMoE bundle, a run dir or a folder of runs")
    if cfg.prompt is None:
        raise TimoeError("--prompt is required (it may be empty: --prompt '')")
    if cfg.query_date is not None:
        parse_query_date(cfg.query_date)
    m = load_evaluated_model(cfg.model, cfg.strategy, policy=cfg.policy, device=cfg.device)
    notes = [f"warning: {w}" for w in model_warnings(m, cfg.query_date)]
    if isinstance(m, MixtureModel):  # dated: answers as of the query date
        if cfg.query_date is None:
            raise TimoeError(
                "--query-date is required for a TiMoE mixture: generation is as of a date"
            )
        m.eligible_experts(cfg.query_date)  # none that early: exit 2, naming the first date
        net: TiMoE | GPT = m.mix
    else:
        assert isinstance(m, SingleModel)  # what load_evaluated_model returns otherwise
        net = m.gpt
        if cfg.query_date is not None:
            notes.append(
                f"note: {m.name} is a single model; --query-date does not restrict what it knows"
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
    return GeneratedText(result, tok.decode(result.tokens), notes)
