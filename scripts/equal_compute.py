"""TiMoE against the leak-free dense series at equal training compute, on the built-in corpus.

Every row is trained with the same number of optimizer steps of the same batch and
sequence length (printed per row; decay branches count), the demo's model and corpus
(`timoe_core.demo`) at the size asked:

- independent experts: one per 2-year slice, from random weights (the demo's);
- chained experts: each slice's from the preceding slice's final expert
  (`train-expert --init-from previous`);
- shared-base experts: a base on the first year (`train-expert --base --until 2013`),
  every expert started from it; the base's steps are taken from the experts' (one step
  fewer per year stage), so the row's total is the same;
- each expert family under avg and learned-avg (the staged router adds the same router
  steps to every family: `--router-steps` per year);
- the leak-free dense series (`train-expert --all-years`, as of d its snapshot <= d) and
  the dense all-years model (not point-in-time: it has read every year).

Then `compare_models` (the demo's evaluation): held-out perplexity of each year as of
that year (mean over the years with its 95% interval, and per year) and the built-in
temporal QA, each item as of its own year: accuracy and past, future and irrelevant
error rates, each with its count and 95% Wilson interval. Prints a markdown table and
writes OUT/equal_compute.json. CPU-heavy: run it by hand, never in the test suite.

    python scripts/equal_compute.py --out /tmp/equal-compute              # ~5 min, 2 cores
    python scripts/equal_compute.py --out /tmp/equal-compute-demo --size demo
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from timoe_core.config import (
    DemoConfig,
    PrepareDataConfig,
    TrainExpertConfig,
    TrainRouterConfig,
)
from timoe_core.data.manifest import load_manifest
from timoe_core.data.prepare import prepare_data
from timoe_core.demo import DemoSettings, demo_settings
from timoe_core.demo.stages import training_options
from timoe_core.evaluate import compare_models, compare_table
from timoe_core.recipes.registry import train_router
from timoe_core.train import train_expert
from timoe_core.train.schedule import stage_decay_steps

FAMILIES = ("independent", "chained", "shared-base")


def settings(size: str, seed: int, device: str) -> DemoSettings:
    """`demo`: the full demo's sizes; `small`: a few minutes on 2 CPU cores."""
    s = demo_settings(DemoConfig(quick=size != "demo", seed=seed, device=device))
    if size == "small":
        s = s.model_copy(update={"n_layer": 1, "n_embd": 64, "n_head": 2, "expert_steps": 8,
                                 "eval_items": 192})
    return s


def stage_cost(steps: int, decay_fraction: float) -> int:
    """Optimizer steps of one year stage: its main steps and its decay (branch or final)."""
    return steps + stage_decay_steps(steps, decay_fraction)


def base_budget(s: DemoSettings, n_stages: int, decay_fraction: float) -> tuple[int, int]:
    """(base steps, expert steps per stage) of the shared-base row with the total of the
    independent row: the experts give up one step per stage, the base gets them."""
    target = n_stages * stage_cost(s.expert_steps, decay_fraction)
    expert_steps = s.expert_steps - 1
    rest = target - n_stages * stage_cost(expert_steps, decay_fraction)
    for base_steps in range(1, rest + 1):
        if stage_cost(base_steps, decay_fraction) == rest:
            return base_steps, expert_steps
    raise SystemExit(f"no base budget gives {rest} steps at this size; choose other steps")


def build(out: Path, s: DemoSettings) -> dict:
    model = {"n_layer": s.n_layer, "n_head": s.n_head, "n_embd": s.n_embd, "seq_len": s.seq_len}
    data = out / "data"
    if not (data / "manifest.json").is_file():
        prepare_data(PrepareDataConfig(source="builtin", out=data, seq_len=s.seq_len,
                                       val_fraction=s.val_fraction,
                                       builtin_docs_per_year=s.docs_per_year, seed=s.seed))
    manifest = load_manifest(data)
    slices = manifest.time_slicing().slices
    n_stages = len(manifest.years_with_tokens("train"))
    decay = TrainExpertConfig.model_fields["decay_fraction"].default
    training = training_options(s, s.expert_steps, s.expert_lr)
    base_steps, based_steps = base_budget(s, n_stages, decay)
    steps = {"independent": n_stages * stage_cost(s.expert_steps, decay),
             "chained": n_stages * stage_cost(s.expert_steps, decay),
             "shared-base": stage_cost(base_steps, decay)
             + n_stages * stage_cost(based_steps, decay),
             "dense": n_stages * stage_cost(s.expert_steps, decay)}
    seconds: dict[str, float] = {}

    def timed(name: str, train, cfg) -> None:
        t0 = time.perf_counter()
        train(cfg)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0

    first = slices[0].start_year
    timed("shared-base", train_expert, TrainExpertConfig(
        base=True, until=str(first), data=data, out=out / "base", **model,
        **{**training, "steps_per_stage": base_steps}))
    for k, sl in enumerate(slices):
        common = {"year": sl.start_year, "data": data, **model}
        timed("independent", train_expert, TrainExpertConfig(
            out=out / "independent" / sl.label, **common, **training))
        timed("chained", train_expert, TrainExpertConfig(
            out=out / "chained" / sl.label, init_from="previous" if k else None, **common,
            **training))
        timed("shared-base", train_expert, TrainExpertConfig(
            out=out / "shared-base" / sl.label, init_from=str(out / "base"), **common,
            **{**training, "steps_per_stage": based_steps}))
    timed("dense", train_expert, TrainExpertConfig(
        all_years=True, data=data, out=out / "dense", **model, **training))
    entries, labels = [], []
    for family in FAMILIES:
        for strategy in ("avg", "learned-avg"):
            bundle = out / f"{family}-{strategy}"
            extra = (training_options(s, s.router_steps, s.router_lr) if strategy == "learned-avg"
                     else {})
            timed(f"{family} {strategy} router", train_router, TrainRouterConfig(
                strategy=strategy, experts=[out / family], data=data, out=bundle, **extra))
            entries.append(f"{bundle}:{strategy}")
            labels.append(f"{family} {strategy}")
    entries += [f"{out / 'dense'}:dense-series", f"{out / 'dense'}:dense"]
    labels += ["dense series (leak-free)", "dense (all years)"]
    t0 = time.perf_counter()
    result = compare_models(entries, data, "builtin", max_docs=s.eval_windows_per_year,
                            max_items=s.eval_items, seq_len=s.seq_len, device=s.device)
    seconds["evaluate"] = time.perf_counter() - t0
    for label, m in zip(labels, result["models"]):
        m["label"] = label
    return {"settings": s.model_dump(), "optimizer_steps": steps,
            "tokens_per_step": s.batch_size * s.seq_len, "base_steps": base_steps,
            "shared_base_expert_steps_per_stage": based_steps, "seconds": seconds,
            "hardware": f"{platform.processor() or platform.machine()}, "
                        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
            "comparison": result}


def markdown(report: dict) -> str:
    headers, rows = compare_table(report["comparison"], per_year=True)
    steps = report["optimizer_steps"]
    per_model = [steps["dense"] if h.startswith("dense") else steps[h.split()[0]]
                 for h in headers[1:]]
    rows = [["training steps x batch x seq", *[f"{n} x {report['settings']['batch_size']} x "
                                                f"{report['settings']['seq_len']}"
                                                for n in per_model]], *rows]
    lines = ["| " + " | ".join(headers) + " |", "| --- |" + " ---: |" * (len(headers) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", choices=["small", "demo"], default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = build(args.out, settings(args.size, args.seed, args.device))
    (args.out / "equal_compute.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nseconds: {json.dumps({k: round(v) for k, v in report['seconds'].items()})}")


if __name__ == "__main__":
    main()
