"""`timoe train-router --strategy learned-avg`: router-only training, its log-prob cache,
resume, the bundle, the CLI and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import (  # noqa: F401 (fixture)
    make_data_dir,
    make_expert_runs,
    make_mixture_inputs,
    one_thread,
    run_cli,
)
from safetensors.torch import load_file

from timoe_core.config import TrainRouterConfig
from timoe_core.data.manifest import sha256_file
from timoe_core.data.windows import TokenWindows
from timoe_core.errors import TimoeError
from timoe_core.model.bundle import BUNDLE_FILENAME, ROUTER_FILENAME
from timoe_core.model.gpt import GPT
from timoe_core.model.mixture import TiMoE
from timoe_core.model.run_info import MODEL_FILENAME
from timoe_core.model.weights import load_model_weights
from timoe_core.recipes import train_router
from timoe_core.recipes.learned_avg import LearnedAvgTask
from timoe_core.train import mixture_run
from timoe_core.train import state as ckpt_state
from timoe_core.train.logprob_cache import CACHE_DIRNAME
from timoe_core.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
WINDOWS = 186  # train windows of make_mixture_inputs: 6 years x 31


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_mixture_inputs(tmp_path_factory.mktemp("router"))


def config(inputs, out, **kw) -> TrainRouterConfig:
    data, experts = inputs
    base = {"experts": [experts], "data": data, "out": out, "batch_size": 8, "lr": 3e-3,
            "device": "cpu", "log_every": 5, "max_steps": 10,
            "policy": "inclusive"}  # one router over every year (the staged one: elsewhere)
    return TrainRouterConfig(**(base | kw))


def capture_mixtures(mp: pytest.MonkeyPatch) -> list[TiMoE]:
    """Record the mixture every run trains (build_mixture's result)."""
    built: list[TiMoE] = []
    real = mixture_run.build_mixture

    def spy(plan, device):
        mix = real(plan, device)
        built.append(mix)
        return mix

    mp.setattr(mixture_run, "build_mixture", spy)
    return built


def val_batch(data):
    val = TokenWindows(data, "val", range(2013, 2019), 32)
    rows, years = val.batch(np.arange(len(val)))
    return rows[:, :-1], rows[:, 1:], years.tolist()


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory):
    """A learned-avg bundle trained for 2 epochs with the cache, and its live mixture."""
    out = tmp_path_factory.mktemp("trained") / "m"
    with pytest.MonkeyPatch.context() as mp:
        built = capture_mixtures(mp)
        assert train_router(config(inputs, out, max_steps=46)) == out
    return out, built[0]


def test_only_the_router_is_trained_and_the_bundle_reloads_identically(inputs, trained):
    out, mix = trained
    data, experts = inputs
    # Every expert's weights, as trained on, are bitwise its run dir's weights.
    assert mix.loaded_experts() == ["2013-2014", "2015-2016", "2017-2018"]
    for label in mix.loaded_experts():
        source = load_model_weights(experts / label[:4])
        for name, value in mix.expert(label).state_dict().items():
            if name != "lm_head.weight":  # tied to wte, stored once
                assert torch.equal(value, source[name]), (label, name)
        assert all(not p.requires_grad for p in mix.expert(label).parameters())
    # The router did train: its output layer starts at zero.
    assert mix.router.out.weight.abs().max() > 1e-3
    spec = json.loads((out / BUNDLE_FILENAME).read_text())
    assert spec["strategy"] == "learned-avg"
    for e in spec["experts"]:
        assert not e["embedded"]
        assert e["weights_sha256"] == sha256_file(experts / e["slice_label"][:4] / MODEL_FILENAME)
    assert not (out / "experts").exists()
    # The bundle is what was trained: same mixture log-probs, bitwise.
    x, y, years = val_batch(data)
    back = TiMoE.from_bundle(out)
    mix.eval()
    with torch.no_grad():
        assert torch.equal(back.mixture_log_probs(x[:4], years[:4]), mix.mixture_log_probs(
            x[:4], years[:4]))
        assert torch.equal(back.mixture_target_log_probs(x, y, years),
                           mix.mixture_target_log_probs(x, y, years))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["strategy"] == "learned-avg" and saved["max_steps"] == 46


def test_learned_avg_beats_avg_on_held_out_windows(inputs, trained):
    out, _ = trained
    x, y, years = val_batch(inputs[0])
    learned = TiMoE.from_bundle(out)
    with torch.no_grad():
        nll_learned = -learned.mixture_target_log_probs(x, y, years).mean().item()
        nll_avg = -learned.as_average().mixture_target_log_probs(x, y, years).mean().item()
    # Each window's own-slice expert is far better than the older ones: avg dilutes it.
    assert nll_learned < nll_avg - 0.1, (nll_learned, nll_avg)
    evals = [m for m in read_metrics(out) if m["type"] == "eval"]
    assert evals and evals[-1]["eval_loss"] == pytest.approx(nll_learned, rel=1e-5)


def test_resume_10_then_20_equals_20_uninterrupted(inputs, tmp_path):
    # 20 steps x 8 windows < one epoch: no cache, so the experts run in every step.
    whole = train_router(config(inputs, tmp_path / "whole", max_steps=20, cache_log_probs=False))
    part = config(inputs, tmp_path / "part", max_steps=20, cache_log_probs=False)
    train_router(part.model_copy(update={"stop_at_step": 10}))
    assert ckpt_state.latest_checkpoint(tmp_path / "part").step == 10
    assert (tmp_path / "part" / BUNDLE_FILENAME).is_file()  # a bundle of the router so far
    train_router(part)
    a = load_file(str(whole / ROUTER_FILENAME))
    b = load_file(str(tmp_path / "part" / ROUTER_FILENAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[m["loss"] for m in read_metrics(d) if m["type"] == "train"]
              for d in (whole, tmp_path / "part")]
    assert losses[0] == losses[1]


def _count_expert_rows(mp: pytest.MonkeyPatch) -> dict[str, int]:
    """Rows every expert forward reads, split into inside a training step or not."""
    counts = {"step": 0, "other": 0}
    in_step = [False]
    real_hidden, real_loss = GPT.hidden_states, LearnedAvgTask.loss

    def hidden_states(self, idx, *args, **kwargs):
        counts["step" if in_step[0] else "other"] += idx.size(0)
        return real_hidden(self, idx, *args, **kwargs)

    def loss(self, model, batch):
        in_step[0] = True
        try:
            return real_loss(self, model, batch)
        finally:
            in_step[0] = False

    mp.setattr(GPT, "hidden_states", hidden_states)
    mp.setattr(LearnedAvgTask, "loss", loss)
    return counts


def test_cache_means_no_expert_runs_in_the_training_steps_and_the_same_loss(inputs, tmp_path):
    steps = 2 * (WINDOWS // 8)  # two epochs
    # Each window is scored by the experts eligible as of its year: 1, 1, 2, 2, 3, 3.
    one_pass = 31 * (1 + 1 + 2 + 2 + 3 + 3)
    with pytest.MonkeyPatch.context() as mp:
        cached_rows = _count_expert_rows(mp)
        train_router(config(inputs, tmp_path / "c", max_steps=steps, eval_batches=1))
    with pytest.MonkeyPatch.context() as mp:
        plain_rows = _count_expert_rows(mp)
        train_router(config(inputs, tmp_path / "p", max_steps=steps, eval_batches=1,
                            cache_log_probs=False))
    assert cached_rows["step"] == 0  # no step of either epoch ran an expert
    eval_rows = plain_rows["other"]  # the final evaluation, the same in both runs
    assert cached_rows["other"] == one_pass + eval_rows  # the cache: each window once
    assert plain_rows["step"] > 1.8 * one_pass  # two epochs of expert forwards
    caches = list((tmp_path / "c" / CACHE_DIRNAME).iterdir())
    assert len(caches) == 1 and not (tmp_path / "p" / CACHE_DIRNAME).exists()
    chunk = np.fromfile(next(caches[0].glob("chunk-*.f16")), dtype=np.float16)
    assert chunk.size == WINDOWS * 32 * 3  # (windows, T, K) fp16
    a = [m["loss"] for m in read_metrics(tmp_path / "c") if m["type"] == "train"]
    b = [m["loss"] for m in read_metrics(tmp_path / "p") if m["type"] == "train"]
    assert len(a) == len(b) > 5 and np.allclose(a, b, rtol=2e-3, atol=2e-3), (a, b)
    # A rerun with more steps reuses the cache: still no expert in any step.
    with pytest.MonkeyPatch.context() as mp:
        rows = _count_expert_rows(mp)
        train_router(config(inputs, tmp_path / "c", max_steps=steps + 4, eval_batches=1))
    assert rows["step"] == 0 and rows["other"] == eval_rows


def test_cache_key_changes_with_the_experts():
    """A cache is never read for other experts, data or seq_len: they are in its key."""
    from timoe_core.train.logprob_cache import _digest, cache_key

    key = {"data_files_sha256": {"train/2013.bin": "d"}, "split": "train", "years": [2013], "seq_len": 32,
           "policy": "inclusive", "experts": {"2013-2014": "a"}}
    assert _digest(cache_key(**key)) != _digest(cache_key(**(key | {"experts": {
        "2013-2014": "b"}})))
    assert _digest(cache_key(**key)) != _digest(cache_key(**(key | {"seq_len": 16})))
    assert _digest(cache_key(**key)) != _digest(cache_key(**(key | {"data_files_sha256": {"train/2013.bin": "e"}})))
    assert _digest(cache_key(**key)) != _digest(cache_key(**key, compute_dtype="bfloat16"))


# ------------------------------------------------------------------------ CLI

SMALL = ["--batch-size", "8", "--device", "cpu", "--log-every", "5"]


def test_cli_trains_resumes_evaluates_and_refuses_conflicting_flags(capsys, inputs, tmp_path):
    data, experts = inputs
    m = tmp_path / "m"
    args = ["train-router", "--policy", "inclusive", "--strategy", "learned-avg", "--experts", experts, "--data", data,
            "--out", m, "--max-steps", 6, *SMALL]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "trained" in out and "step 6" in out
    assert (m / BUNDLE_FILENAME).is_file() and (m / ROUTER_FILENAME).is_file()
    assert yaml.safe_load((m / "config.yaml").read_text())["max_steps"] == 6
    code, out, err = run_cli(capsys, *args)  # the same command again: resumes, nothing to do
    assert code == 0 and "nothing to train" in out, (out, err)

    report = tmp_path / "eval.json"
    code, out, err = run_cli(capsys, "evaluate", "--model", m, "--strategy", "learned-avg",
                             "--data", data, "--json", report, "--max-docs", 2)
    assert code == 0, err
    result = json.loads(report.read_text())
    assert result["strategy"] == "learned-avg"
    assert set(result["perplexity"]) >= {"2013", "2018"}

    before = {p: p.stat().st_mtime_ns for p in m.rglob("*")}
    code, out, err = run_cli(capsys, *args, "--seed", 1, "--top-k", 2)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "--seed (run has 0, flags give 1)" in err and "--top-k" in err
    assert {p: p.stat().st_mtime_ns for p in m.rglob("*")} == before  # untouched


def test_cli_avg_still_writes_a_bundle_without_training(capsys, inputs, tmp_path):
    code, _, err = run_cli(capsys, "train-router", "--policy", "inclusive", "--strategy", "avg", "--experts", inputs[1],
                           "--out", tmp_path / "a")
    assert code == 0, err
    mix = TiMoE.from_bundle(tmp_path / "a")
    assert mix.strategy == "avg" and mix.router is None
    assert not (tmp_path / "a" / "checkpoints").exists()
    # A learned-avg run refuses to take over an avg bundle unless told to.
    code, _, err = run_cli(capsys, "train-router", "--policy", "inclusive", "--experts", inputs[1], "--data", inputs[0],
                           "--out", tmp_path / "a", "--max-steps", 2, *SMALL)
    assert code == 2 and "--overwrite" in err


def test_years_without_an_eligible_expert_are_skipped_and_named(capsys, inputs, tmp_path):
    data, experts = inputs
    code, out, err = run_cli(capsys, "train-router", "--policy", "inclusive", "--experts", experts / "2017",
                             "--data", data, "--out", tmp_path / "m", "--max-steps", 2, *SMALL)
    assert code == 0, err
    assert "skipping data years without a usable expert: 2013" in out
    assert "2016 (no expert is eligible as of 2016" in out and "2017 (" not in out
    record = json.loads((tmp_path / "m" / mixture_run.MIXTURE_RUN_FILENAME).read_text())
    assert record["years"] == [2017, 2018]


@pytest.fixture(scope="module")
def odd_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    (root / "empty").mkdir()
    make_expert_runs(root / "mixed", ["2013-2014"], vocab_size=128)
    make_expert_runs(root / "mixed", ["2015-2016"], vocab_size=128,
                     tokenizer={"name": "other", "vocab_size": 128, "eot_token": 127})
    return {
        "root": root,
        "wide": make_data_dir(root, years=(2013, 2014), vocab_size=256, name="wide"),
        "early": make_data_dir(root, years=(2013, 2014), vocab_size=128, name="early"),
    }


BAD = [
    ("empty experts dir", lambda i, o: ["--experts", o["root"] / "empty"],
     "neither an expert run dir"),
    ("experts disagree", lambda i, o: ["--experts", o["root"] / "mixed"],
     "experts disagree on tokenizer"),
    ("data tokenizer", lambda i, o: ["--experts", i[1], "--data", o["wide"]],
     "use different tokenizers"),
    ("no year covered", lambda i, o: ["--experts", i[1] / "2017", "--data", o["early"]],
     "2013: no expert is eligible as of 2013"),
    ("unknown strategy", lambda i, o: ["--experts", i[1], "--strategy", "learned"], "--strategy"),
    ("no data", lambda i, o: ["--experts", i[1], "--data", o["root"] / "nope"], "nope"),
]


@pytest.mark.parametrize("what, make_args, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    capsys, inputs, odd_inputs, tmp_path, what, make_args, words
):
    args = make_args(inputs, odd_inputs)
    if "--data" not in args:
        args += ["--data", inputs[0]]
    out_dir = tmp_path / "m"
    code, out, err = run_cli(capsys, "train-router", "--policy", "inclusive", *args, "--out", out_dir, "--max-steps", 2,
                             *SMALL)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert words in err, err
    assert not out_dir.exists()


# ------------------------------------------------ staged routers (point-in-time)


@pytest.mark.parametrize("flags, message", [
    (["--max-steps", "4"], "--steps-per-stage"),
    (["--nproc-per-node", "2"], "one process"),
])
def test_staged_router_refuses_a_global_budget_and_workers(capsys, inputs, tmp_path, flags,
                                                           message):
    data, experts = inputs
    code, _, err = run_cli(capsys, "train-router", "--experts", experts, "--data", data,
                           "--out", tmp_path / "m", "--device", "cpu", *flags)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_staged_router_writes_one_snapshot_per_cutoff_and_resumes(inputs, tmp_path):
    from timoe_core.model.mixture import TiMoE

    data, experts = inputs
    cfg = TrainRouterConfig(experts=[experts], data=data, out=tmp_path / "m", batch_size=8,
                            steps_per_stage=2, device="cpu", log_every=5)
    out = train_router(cfg)
    spec = json.loads((out / "timoe.json").read_text())
    # experts of 2013-2014, 2015-2016, 2017-2018 (one artefact each, cutoffs 2014, 2016,
    # 2018), documents dated by year (Y-12-31): a monthly router (the default) has a
    # stage at every month end from the first cutoff with new windows or a new slice:
    # every year end from 2014 (2015's and 2017's windows, read through the slices
    # usable then), over the slices usable then. The other month ends have nothing new.
    cutoffs = [r["data_cutoff"] for r in spec["router_snapshots"]]
    assert cutoffs == ["2014-12-31", "2015-12-31", "2016-12-31", "2017-12-31", "2018-12-31"]
    assert [len(r["config"]["slice_labels"]) for r in spec["router_snapshots"]] == [1, 1, 2, 2, 3]
    mix = TiMoE.from_bundle(out)
    assert mix.artefacts_used("2017-06")[-1] == {"name": "router@2016-12-31",
                                                 "data_cutoff": "2016-12-31"}
    assert mix.artefacts_used("2017-12-31")[-1] == {"name": "router@2017-12-31",
                                                    "data_cutoff": "2017-12-31"}
    # a finished stage keeps only its metrics: its trainer state is never needed again
    stages = sorted((out / "stages").iterdir())
    assert [sorted(p.name for p in s.iterdir()) for s in stages] == [["metrics.jsonl"]] * 5
    assert all(read_metrics(s)[-1]["step"] == 2 for s in stages)
    metrics = sorted((out / "stages").rglob("metrics.jsonl"))
    before = {p: p.read_bytes() for p in metrics}
    train_router(cfg)  # every stage is done: none is trained again (no metrics appended)
    assert {p: p.read_bytes() for p in metrics} == before
    assert not list((out / "stages").rglob("trainer_state.pt"))
    # asked to keep them, each stage's last checkpoint stays
    kept = train_router(cfg.model_copy(update={"out": tmp_path / "k",
                                               "keep_stage_checkpoints": True}))
    assert len(sorted((kept / "stages").rglob("trainer_state.pt"))) == 5
    assert (kept / "routers").is_dir() and (kept / "timoe.json").read_text() == (
        out / "timoe.json").read_text().replace(str(out), str(kept))


def test_a_staged_router_decides_its_run_dir_as_every_job_does(inputs, tmp_path):
    # The one run-dir decision (train.run_dir.decide_run_dir): a staged run's settings
    # changed by the flags are named as every job names them, --no-resume is refused, a
    # bundle no training run wrote is replaced only under --overwrite; nothing is touched.
    data, experts = inputs
    cfg = TrainRouterConfig(experts=[experts], data=data, out=tmp_path / "m", batch_size=8,
                            steps_per_stage=1, device="cpu", log_every=5)
    out = train_router(cfg)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(TimoeError, match=r"cannot resume .*--lr \(run has 0.001, flags give 0.002\)"):
        train_router(cfg.model_copy(update={"lr": 0.002}))
    with pytest.raises(TimoeError, match="already holds a run: rerun without --no-resume"):
        train_router(cfg.model_copy(update={"resume": False}))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    avg = train_router(TrainRouterConfig(strategy="avg", experts=[experts], out=tmp_path / "a"))
    with pytest.raises(TimoeError, match="holds a timoe.json that no training run wrote"):
        train_router(cfg.model_copy(update={"out": avg}))
    trained = train_router(cfg.model_copy(update={"out": avg, "overwrite": True}))
    assert json.loads((trained / "timoe.json").read_text())["strategy"] == "learned-avg"


def test_an_unstaged_router_over_experts_with_snapshots_has_one_slot_per_slice(
    inputs, tmp_path
):
    """Snapshots are more artefacts of the same slice, not more router slots: a router
    over slices with snapshots (here the inclusive, unstaged one) still has one slot each."""
    from timoe_core.config import TrainExpertConfig
    from timoe_core.train import train_expert

    data, _ = inputs
    experts = tmp_path / "experts"
    for year in (2013, 2015):
        train_expert(TrainExpertConfig(
            year=year, data=data, out=experts / str(year), n_layer=1, n_head=2, n_embd=32,
            seq_len=32, steps_per_stage=2, batch_size=8, device="cpu", log_every=5,
        ))
    assert len(json.loads((experts / "2013" / "run.json").read_text())["snapshots"]) == 1
    out = train_router(config((data, experts), tmp_path / "m", max_steps=2))
    spec = json.loads((out / BUNDLE_FILENAME).read_text())
    assert spec["router"]["slice_labels"] == ["2013-2014", "2015-2016"]
    assert TiMoE.from_bundle(out).router.n_experts == 2


def _router_over_spread_dates(tmp_path, capsys, name: str, batch_size: int, every: str):
    """A staged learned-avg router over two slice experts, on 2013-2016 data whose
    documents are dated across each year (8 a year of 256 tokens): (data, bundle, what it
    printed)."""
    from helpers import make_data_dir, make_expert_runs

    data = make_data_dir(tmp_path, years=range(2013, 2017), tokens_per_year=2048, vocab_size=128,
                         doc_dates="spread")
    make_expert_runs(tmp_path / "experts", ["2013-2014", "2015-2016"],
                     tokenizer={"name": "gpt2", "vocab_size": 128, "eot_token": 127})
    cfg = TrainRouterConfig(experts=[tmp_path / "experts"], data=data, out=tmp_path / name,
                            batch_size=batch_size, steps_per_stage=1, device="cpu", log_every=5,
                            cutoff_every=every)
    out = train_router(cfg)
    return data, out, capsys.readouterr().out


def test_router_stages_by_quarter_read_each_quarters_windows_as_of_its_end(tmp_path, capsys):
    """A staged router with --cutoff-every quarter: a stage at every quarter end with new
    windows (documents dated across each year), each reading exactly the windows dated in
    (previous cutoff, its end], through the artefacts usable then."""
    from datetime import date

    from timoe_core.data.windows import TokenWindows
    from timoe_core.model.mixture import TiMoE
    from timoe_core.train.staging_plan import router_cutoffs

    data, out, printed = _router_over_spread_dates(tmp_path, capsys, "q", 4, "quarter")
    quarters = [date(y, m, d) for y in (2015, 2016) for m, d in ((3, 31), (6, 30), (9, 30),
                                                                  (12, 31))]
    expected = [date(2014, 12, 31)] + quarters
    spec = json.loads((out / "timoe.json").read_text())
    assert [r["data_cutoff"] for r in spec["router_snapshots"]] == [d.isoformat() for d in expected]
    # 2015-2016's one artefact (its final weights) is usable from 2016-12-31
    assert [len(r["config"]["slice_labels"]) for r in spec["router_snapshots"]] == [1] * 8 + [2]
    windows = TokenWindows(data, "train", range(2013, 2017), 32)
    previous = date(2014, 12, 31)
    for end in quarters:
        n = windows.windows_up_to(end) - windows.windows_up_to(previous)
        assert n >= 4
        assert (f"stage {end}: 1 steps on {n} windows dated "
                f"{date.fromordinal(previous.toordinal() + 1)}..{end}") in printed
        stage = windows.dated(previous, end)
        assert len(stage) == n and str(stage.window_dates.min()) > previous.isoformat()
        assert (stage[0] == windows[windows.windows_up_to(previous)]).all()
        previous = end
    mix = TiMoE.from_bundle(out)
    assert mix.artefacts_used("2016-08-15")[-1] == {"name": "router@2016-06-30",
                                                    "data_cutoff": "2016-06-30"}
    # the cutoffs of a router: its period ends from the first artefact's cutoff to the
    # last's, and every cutoff at which a slice becomes usable
    assert router_cutoffs(mix.artefacts, "year") == [date(2014, 12, 31), date(2015, 12, 31),
                                                     date(2016, 12, 31)]


def test_a_month_with_fewer_windows_than_a_step_waits_for_the_next_stage(tmp_path, capsys):
    """Monthly router stages over months that hold fewer windows than a batch: such a
    month trains nothing and writes no snapshot, and its windows are read by the next
    stage of its year (none is lost, none read twice, none read before its date)."""
    import re
    from datetime import date, timedelta

    from timoe_core.data.windows import TokenWindows

    data, out, printed = _router_over_spread_dates(tmp_path, capsys, "m", 12, "month")
    stages = [(date.fromisoformat(a), date.fromisoformat(b), int(n)) for n, a, b in re.findall(
        r"stage \S+: 1 steps on (\d+) windows dated (\S+)\.\.(\S+),", printed)]
    windows = TokenWindows(data, "train", range(2013, 2017), 32)
    # a document (8 windows) every 7 weeks or so: fewer than a batch of 12 in any month
    assert len(stages) >= 4 and any(first.month < end.month for first, end, _ in stages)
    for year in (2015, 2016):
        trained = [(first, end, n) for first, end, n in stages if end.year == year]
        previous = date(year - 1, 12, 31)
        for first, end, n in trained:
            assert first == previous + timedelta(days=1) and n >= 12
            assert n == windows.windows_up_to(end) - windows.windows_up_to(previous)
            previous = end
    spec = json.loads((out / "timoe.json").read_text())
    cutoffs = [r["data_cutoff"] for r in spec["router_snapshots"]]
    # a snapshot where a stage trained or a slice became usable, no other
    assert set(cutoffs) == {end.isoformat() for _, end, _ in stages} | {"2014-12-31",
                                                                         "2016-12-31"}
