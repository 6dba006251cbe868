"""Adding a strategy is one recipe object and one registry line, and the new strategy is
staged, hence point-in-time, with nothing else to do: a toy strategy registered here
passes the counterfactual comparison of tests/test_counterfactual.py."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import torch

from timoe_core.config import (
    EvaluateConfig,
    PrepareDataConfig,
    TrainExpertConfig,
    TrainRouterConfig,
)
from timoe_core.data.manifest import load_manifest
from timoe_core.data.prepare import prepare_data
from timoe_core.evaluate.run import run_evaluate
from timoe_core.generate import generate_tokens
from timoe_core.model.mixture import TiMoE
from timoe_core.model.weighting import REGISTRY, Strategy
from timoe_core.recipes import RECIPES, register, train_router
from timoe_core.recipes.learned_avg import LearnedAvgTask
from timoe_core.train import train_expert
from timoe_core.train.recipe import MixtureRecipe

WHEN = "2015-12-31"  # inside the 2015-2016 slice: only its 2015 snapshot may answer
TRAIN = {"batch_size": 2, "steps_per_stage": 2, "device": "cpu", "log_every": 100,
         "eval_batches": 1}
MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "seq_len": 32}


# ---------------------------------------------------------------- the plugin


class ToyConfig(TrainRouterConfig):
    strategy: Literal["toy-nll"] = "toy-nll"  # type: ignore[assignment]


class ToyTask(LearnedAvgTask):
    """A router trained on the mixture's NLL alone (no auxiliary losses)."""

    name = "toy-nll"

    def loss(self, model: torch.nn.Module, batch):
        x, y, years, cached = batch
        out = self.mixture(model)(x, y, years, cached_expert_log_probs=cached)
        nll = -out.target_log_probs.mean()
        return nll, {"nll": nll.detach()}


def make_task(plan, mix, env) -> ToyTask:
    return ToyTask(mix, plan.train_windows(), plan.val_windows(), seed=plan.cfg.seed,
                   eval_windows=plan.cfg.eval_batches * plan.cfg.batch_size)


def stage_task(stage) -> ToyTask:
    return ToyTask(stage.view, stage.windows, stage.val_windows, seed=stage.cfg.seed,
                   eval_windows=stage.eval_windows)


TOY = MixtureRecipe(Strategy("toy-nll", "router"), ToyConfig, make_task, stage_task, __name__)


@pytest.fixture(scope="module")
def toy_registered():
    register(TOY)  # the one registry line
    yield
    RECIPES.pop("toy-nll")
    REGISTRY.pop("toy-nll")


# ---------------------------------------------------------------- the comparison


def build(root: Path, until: str | None) -> Path:
    data = root / "data"
    prepare_data(PrepareDataConfig(out=data, seq_len=32, val_fraction=0.3, workers=1,
                                   builtin_docs_per_year=12, until=until))
    manifest = load_manifest(data)
    with_tokens = set(manifest.years_with_tokens("train"))
    experts = root / "experts"
    for s in manifest.time_slicing().slices:
        if with_tokens & set(s.years) and s.start_year <= 2016:  # what WHEN can see, and more
            train_expert(TrainExpertConfig(year=s.start_year, data=data,
                                           out=experts / s.label, **MODEL, **TRAIN))
    return train_router(ToyConfig(experts=[experts], data=data, out=root / "toy", **TRAIN))


def answers(bundle: Path) -> dict:
    data = bundle.parent / "data"
    result = run_evaluate(EvaluateConfig(model=bundle, data=data, tsqa="builtin",
                                         query_date=WHEN, device="cpu", batch_size=4,
                                         max_items=40))
    ppl = {y: v for y, v in result.report["perplexity"].items() if int(y) <= 2015}
    gen = generate_tokens(TiMoE.from_bundle(bundle), [464, 1266], query_date=WHEN,
                          max_new_tokens=6, seed=3)
    return {"perplexity": ppl, "scores": result.tsqa.scores, "generated": gen.tokens,
            "artefacts": result.report["artefacts_used"]}


def test_a_registered_toy_strategy_is_staged_and_point_in_time(toy_registered, tmp_path):
    full, cut = build(tmp_path / "all", None), build(tmp_path / "cut", WHEN)
    mix = TiMoE.from_bundle(full)
    assert mix.strategy == "toy-nll" and mix.staged  # staged without asking for it
    a, b = answers(full), answers(cut)
    assert len([v for v in a["perplexity"].values() if v is not None]) >= 2
    assert len(a["scores"]) == 40
    for key in ("perplexity", "scores", "generated", "artefacts"):
        assert a[key] == b[key], key
    routers = [x for x in a["artefacts"] if x["name"].startswith("router@")]
    assert routers and all(x["data_cutoff"] <= WHEN for x in a["artefacts"])
