"""`timoe coadapt`: the router and each batch's own slice expert are trained, every other
expert is left bitwise alone (the paper's code never updated an expert); workers agree
on the active slice; the adapted experts live in the bundle."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import (  # noqa: F401 (fixture)
    make_data_dir,
    make_mixture_inputs,
    one_thread,
    run_cli,
)
from safetensors.torch import load_file
from test_train_distributed import subprocess_env

from timoe_core.config import CoadaptConfig, TrainRouterConfig
from timoe_core.data.manifest import sha256_file
from timoe_core.data.windows import TokenWindows
from timoe_core.model.bundle import BUNDLE_FILENAME, ROUTER_FILENAME
from timoe_core.model.mixture import TiMoE
from timoe_core.model.run_info import MODEL_FILENAME
from timoe_core.recipes.registry import coadapt, train_router
from timoe_core.timeslices import TimeSlice
from timoe_core.train import mixture_run
from timoe_core.train.mixture_run import MIXTURE_RUN_FILENAME

pytestmark = pytest.mark.usefixtures("one_thread")
LABELS = ["2013-2014", "2015-2016", "2017-2018"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_mixture_inputs(tmp_path_factory.mktemp("coadapt"))


def config(inputs, out, **kw) -> CoadaptConfig:
    data, experts = inputs
    base = {"experts": [experts], "data": data, "out": out, "batch_size": 4, "device": "cpu",
            "log_every": 1, "max_steps": 1,
            "policy": "inclusive"}  # one run over every year (the staged one: elsewhere)
    return CoadaptConfig(**(base | kw))


def source_weights(experts, label: str) -> dict[str, torch.Tensor]:
    return load_file(str(experts / label[:4] / MODEL_FILENAME))


def bundle_weights(bundle, label: str) -> dict[str, torch.Tensor]:
    return load_file(str(bundle / "experts" / label / MODEL_FILENAME))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def active_slices(data, run_dir, rank: int = 0) -> list[set[str]]:
    """The slices of the windows each step of `rank` read (from --log-windows)."""
    windows = TokenWindows(data, "train", range(2013, 2019), 32)
    lines = (run_dir / "debug" / f"windows-rank{rank}.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in lines]
    assert [s["step"] for s in steps] == list(range(len(steps)))
    return [{next(lab for lab in LABELS if TimeSlice.from_label(lab).contains_year(
        int(windows.window_years[i]))) for i in s["windows"]} for s in steps]


def test_one_step_changes_the_active_expert_and_the_router_only(inputs, tmp_path, monkeypatch):
    _, experts = inputs
    # Data from 2015 on: every window has 2 or 3 eligible experts, so the router has
    # something to learn in any step, and 2013-2014 is eligible but never adapted.
    late = make_data_dir(tmp_path, years=range(2015, 2019), tokens_per_year=1024,
                         vocab_size=128, name="late")
    built = []
    real = mixture_run.build_mixture
    monkeypatch.setattr(mixture_run, "build_mixture", lambda plan, device: built.append(
        real(plan, device)) or built[-1])
    out = coadapt(config(inputs, tmp_path / "m", data=late, log_windows=True,
                         adapted_weights="all"))
    (mix,) = built
    (active,) = active_slices(late, out)
    assert len(active) == 1
    (label,) = active
    for other in LABELS[1:]:  # the adapted experts, stored in the bundle
        adapted, source = bundle_weights(out, other), source_weights(experts, other)
        if other == label:
            # a real step: every matrix moved (AdamW's first step is about lr per weight)
            assert all(not torch.equal(adapted[k], source[k]) for k in source if k.endswith(
                "weight") and source[k].dim() == 2)
        else:
            assert same(adapted, source), other  # bitwise unchanged
    assert mix.loaded_experts() == LABELS
    frozen = {k: v for k, v in mix.expert("2013-2014").state_dict().items()
              if k != "lm_head.weight"}
    assert same(frozen, source_weights(experts, "2013-2014"))  # ran, but never trained
    router = load_file(str(out / ROUTER_FILENAME))
    assert router["out.weight"].abs().max() > 0  # the router starts at zero: it moved
    spec = json.loads((out / BUNDLE_FILENAME).read_text())
    assert spec["strategy"] == "coadapt"
    for e in spec["experts"]:  # adapted experts live in the bundle, with checksums
        assert e["embedded"] == (e["slice_label"] != "2013-2014")
        weights = (out / e["path"]).resolve() / MODEL_FILENAME
        assert e["weights_sha256"] == sha256_file(weights)
    assert not (out / "experts" / "2013-2014").exists()


def test_resume_equals_an_uninterrupted_run(inputs, tmp_path):
    whole = coadapt(config(inputs, tmp_path / "whole", max_steps=4))
    part = config(inputs, tmp_path / "part", max_steps=4)
    coadapt(part.model_copy(update={"stop_at_step": 2}))
    coadapt(part)
    assert same(load_file(str(whole / ROUTER_FILENAME)),
                load_file(str(tmp_path / "part" / ROUTER_FILENAME)))
    for label in LABELS:
        assert same(bundle_weights(whole, label), bundle_weights(tmp_path / "part", label))


def test_cli_coadapt_from_a_learned_avg_router_then_evaluate(capsys, inputs, tmp_path):
    data, experts = inputs
    learned = train_router(TrainRouterConfig(experts=[experts], data=data, out=tmp_path / "la",
                                              max_steps=6, lr=3e-3, batch_size=8, device="cpu",
                                              policy="inclusive"))
    la_router = load_file(str(learned / ROUTER_FILENAME))
    assert la_router["out.weight"].abs().max() > 1e-3
    m = tmp_path / "m"
    code, out, err = run_cli(capsys, "coadapt", "--policy", "inclusive", "--experts", experts, "--data", data, "--out", m,
                             "--router", learned, "--max-steps", 2, "--lr", 1e-6,
                             "--batch-size", 4, "--device", "cpu")
    assert code == 0, err
    assert "trained" in out and "step 2" in out
    router = load_file(str(m / ROUTER_FILENAME))
    # Started from the learned-avg router: 2 steps of lr 1e-6 stay next to it.
    assert all((router[k] - la_router[k]).abs().max() < 1e-4 for k in la_router)
    record = json.loads((m / MIXTURE_RUN_FILENAME).read_text())
    assert record["router_init"] == sha256_file(learned / ROUTER_FILENAME)

    report = tmp_path / "eval.json"
    code, _, err = run_cli(capsys, "evaluate", "--model", m, "--strategy", "coadapt", "--data",
                           data, "--json", report, "--max-docs", 2)
    assert code == 0, err
    result = json.loads(report.read_text())
    assert result["strategy"] == "coadapt" and set(result["perplexity"]) >= {"2013", "2018"}
    mix = TiMoE.from_bundle(m)
    assert mix.strategy == "coadapt" and mix.expert_dirs["2015-2016"] == m / "experts" / "2015-2016"

    # Resuming with other settings is refused, naming them; nothing is touched.
    before = {p: p.stat().st_mtime_ns for p in m.rglob("*")}
    code, _, err = run_cli(capsys, "coadapt", "--policy", "inclusive", "--experts", experts, "--data", data, "--out", m,
                           "--max-steps", 2, "--batch-size", 4, "--device", "cpu")
    assert code == 2 and "--router (run has" in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.stat().st_mtime_ns for p in m.rglob("*")} == before


@pytest.mark.parametrize("what, args, words", [
    ("avg router", ["--router", "AVG"], "without a router"),
    ("no own expert", ["--experts", "E/2013", "--data", "LATE"],
     "no expert for the slice holding 2015 to adapt"),
    ("empty experts", ["--experts", "DATA/train"], "neither an expert run dir"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, inputs, tmp_path, what,
                                                            args, words):
    data, experts = inputs
    code, _, err = run_cli(capsys, "train-router", "--policy", "inclusive", "--strategy", "avg", "--experts", experts,
                           "--out", tmp_path / "avg")
    assert code == 0, err
    late = make_data_dir(tmp_path, years=(2015, 2016), vocab_size=128, name="late")
    subs = {"AVG": str(tmp_path / "avg"), "E/2013": str(experts / "2013"),
            "DATA/train": str(data / "train"), "LATE": str(late)}
    args = [subs.get(a, a) for a in args]
    if "--experts" not in args:
        args += ["--experts", experts]
    if "--data" not in args:
        args += ["--data", data]
    code, out, err = run_cli(capsys, "coadapt", "--policy", "inclusive", *args, "--out", tmp_path / "m",
                             "--max-steps", 1, "--device", "cpu")
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert words in err, err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_two_gloo_workers_agree_on_the_active_slice_every_step(inputs, tmp_path):
    data, experts = inputs
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "timoe_cli", "coadapt", "--policy", "inclusive", "--experts", str(experts), "--data",
           str(data), "--out", str(out), "--max-steps", "4", "--batch-size", "2",
           "--nproc-per-node", "2", "--log-windows", "--device", "cpu"]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                       env=subprocess_env())
    assert r.returncode == 0, r.stderr
    rank0, rank1 = active_slices(data, out, 0), active_slices(data, out, 1)
    assert len(rank0) == len(rank1) == 4
    for step, (a, b) in enumerate(zip(rank0, rank1)):
        assert len(a) == 1 and a == b, (step, a, b)  # one slice per step, the same on both
    trained = set().union(*rank0)
    for label in LABELS:  # exactly the experts of the active slices moved
        assert same(bundle_weights(out, label), source_weights(experts, label)) == (
            label not in trained), label
    assert TiMoE.from_bundle(out).strategy == "coadapt"


@pytest.mark.parametrize("policy", ["inclusive", "point-in-time"])
def test_a_rerun_with_other_adapted_weights_is_refused_naming_the_flag(inputs, tmp_path,
                                                                       policy):
    """A stopped run resumed with the other --adapted-weights would train the token
    embedding in some steps and not in others: refused, naming the flag, nothing
    changed. A run recorded before the option existed trained every weight: it resumes
    with `all`."""
    from timoe_core.errors import TimoeError

    out = tmp_path / "r"
    budget = ({"max_steps": 2} if policy == "inclusive" else
              {"max_steps": None, "steps_per_stage": 1, "cutoff_every": "year"})
    first = config(inputs, out, policy=policy, adapted_weights="all", **budget)
    coadapt(first.model_copy(update={"stop_at_step": 1}))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(TimoeError, match=r"--adapted-weights \(run has all, flags give blocks\)"):
        coadapt(first.model_copy(update={"adapted_weights": "blocks"}))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    record = json.loads((out / MIXTURE_RUN_FILENAME).read_text())
    assert record.pop("adapted_weights") == "all"
    (out / MIXTURE_RUN_FILENAME).write_text(json.dumps(record))
    coadapt(first)  # resumes and finishes
    assert (out / BUNDLE_FILENAME).is_file()
