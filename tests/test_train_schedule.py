"""Warmup-stable-decay schedule and AdamW parameter groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from timoe_core.model.gpt import GPT, preset_config
from timoe_core.train.optim import build_adamw, param_groups
from timoe_core.train.schedule import WSDSchedule

PEAK = 1e-3


def sched(shape: str, total: int = 100) -> WSDSchedule:
    return WSDSchedule(
        PEAK, total, warmup_fraction=0.05, decay_fraction=0.1, min_lr_ratio=0.1, decay_shape=shape
    )


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_warmup_end_stable_and_decay_end(shape):
    s = sched(shape)
    assert (s.warmup_steps, s.decay_steps) == (5, 10)
    assert s.lr(0) == pytest.approx(PEAK / 5)  # warmup starts above zero
    assert s.lr(4) == pytest.approx(PEAK)  # warmup end: the peak
    assert all(s.lr(i) == pytest.approx(PEAK) for i in range(4, 90))  # stable
    assert s.lr(89) == pytest.approx(PEAK)  # last stable step
    assert s.lr(99) == pytest.approx(0.1 * PEAK)  # decay end: the floor
    decay = [s.lr(i) for i in range(89, 100)]
    assert all(a >= b for a, b in itertools.pairwise(decay))  # monotone decay


@pytest.mark.parametrize(
    "shape, expected",
    [
        ("linear", 0.1 + 0.9 * 0.7),
        ("cosine", 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.3))),
        ("1-sqrt", 0.1 + 0.9 * (1 - math.sqrt(0.3))),
    ],
)
def test_decay_shapes_differ_mid_decay(shape, expected):
    # step 92 is the 3rd of 10 decay steps: p = 0.3
    assert sched(shape).lr(92) == pytest.approx(PEAK * expected)


def test_no_warmup_no_decay_is_constant():
    s = WSDSchedule(PEAK, 20, warmup_fraction=0.0, decay_fraction=0.0)
    assert {s.lr(i) for i in range(20)} == {PEAK}


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError):
        WSDSchedule(PEAK, 0)
    with pytest.raises(ValueError):
        WSDSchedule(PEAK, 10, warmup_fraction=0.6, decay_fraction=0.6)


def test_weight_decay_only_on_matrices_and_tied_weights_once():
    model = GPT(preset_config("tiny", vocab_size=256, n_layer=1))
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids))  # lm_head is wte: listed once
    assert any(p is model.wte.weight for p in decay["params"])
    assert len(ids) == len(list(model.parameters()))
    opt = build_adamw(model, lr=1e-3, weight_decay=0.1)
    assert not opt.defaults.get("fused")  # fused AdamW only on CUDA


def test_frozen_parameters_are_left_out():
    model = GPT(preset_config("tiny", vocab_size=256, n_layer=1))
    model.wpe.weight.requires_grad_(False)
    groups = param_groups(model, 0.1)
    assert all(p is not model.wpe.weight for g in groups for p in g["params"])
    assert isinstance(build_adamw(model, 1e-3, 0.1), torch.optim.AdamW)
