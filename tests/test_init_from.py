"""`train-expert --init-from SRC` and `--base --until DATE`: every SRC kind starts the run
from its weights and is recorded as the chain in run.json; the cutoff of every artefact
is at least SRC's; mismatched SRCs are refused naming the tensor. Tiny models on CPU
(about 60 s on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_data_dir, one_thread, run_cli  # noqa: F401 - one_thread: fixture
from safetensors.torch import load_file

from timoe_core.config import TrainExpertConfig
from timoe_core.errors import TimoeError
from timoe_core.io import sha256_file
from timoe_core.model.foreign import read_foreign_model
from timoe_core.model.gpt import GPT, GPTConfig
from timoe_core.model.mixture import TiMoE
from timoe_core.model.run_info import read_run_info
from timoe_core.train import rng, train_expert
from timoe_core.train import state as ckpt_state
from timoe_core.train.distributed import DistEnv
from timoe_core.train.expert import EXPERT_JOB
from timoe_core.train.expert_plan import plan_expert_run

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "seq_len": 32, "batch_size": 8, "lr": 3e-3,
        "device": "cpu", "log_every": 100, "steps_per_stage": 4}
TINY_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--seq-len", "32",
              "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--steps-per-stage", "4"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _start_state(cfg: TrainExpertConfig) -> tuple[dict[str, torch.Tensor], object]:
    """The weights the run's task starts from (before any step), and its plan."""
    plan = plan_expert_run(cfg)
    task = EXPERT_JOB.build_task(plan, DistEnv())
    state = {k: v for k, v in task.model.state_dict().items() if k != "lm_head.weight"}
    return state, plan


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Data 2013-2016 (vocab 128), a base up to 2014 (staged: a 2013 snapshot), an
    expert of 2013-2014 from scratch in experts/, and an avg bundle over it."""
    root = tmp_path_factory.mktemp("init")
    data = make_data_dir(root, years=range(2013, 2017), tokens_per_year=1024, vocab_size=128)
    train_expert(TrainExpertConfig(base=True, until="2014", data=data, out=root / "base", **TINY))
    train_expert(TrainExpertConfig(year=2013, data=data, out=root / "experts" / "a", **TINY))
    from typer.testing import CliRunner

    from timoe_cli.main import app

    done = CliRunner().invoke(app, ["train-router", "--strategy", "avg", "--experts",
                                    str(root / "experts"), "--out", str(root / "bundle")])
    assert done.exit_code == 0, done.output
    return {"root": root, "data": data, "base": root / "base", "expert": root / "experts" / "a",
            "bundle": root / "bundle"}


def test_base_until_reads_the_years_that_end_by_the_date(built, tmp_path, capsys):
    info = read_run_info(built["base"])
    assert (info.kind, info.slice_label, info.data_cutoff) == ("base", "2013-2014", "2014-12-31")
    assert {Path(f).stem for f in info.data_files_sha256} == {"2013", "2014"}
    # mid-2014: 2014's text is not all dated by then, so only 2013 is read
    code, _, err = run_cli(capsys, "train-expert", "--base", "--until", "2014-06-30", "--data",
                           built["data"], "--out", tmp_path / "b", *TINY_FLAGS)
    assert code == 0, err
    info = read_run_info(tmp_path / "b")
    assert (info.slice_label, info.data_cutoff) == ("2013", "2013-12-31")
    assert {Path(f).stem for f in info.data_files_sha256} == {"2013"}
    code, _, err = run_cli(capsys, "train-expert", "--base", "--data", built["data"], "--out",
                           tmp_path / "c", *TINY_FLAGS)
    assert code == 2 and "--base and --until DATE go together" in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("kind", ["run", "snapshot", "bundle-expert", "bundle-label",
                                  "bundle-key", "previous"])
def test_init_from_each_timoe_source_starts_from_its_weights(built, kind):
    root = built["root"]
    spec, folder, cutoff = {
        "run": (str(built["base"]), built["base"], "2014-12-31"),
        "snapshot": (str(built["base"] / "snapshots" / "2013-12-31"),
                     built["base"] / "snapshots" / "2013-12-31", "2013-12-31"),
        "bundle-expert": (f"{built['bundle']}:expert:2014", built["expert"], "2014-12-31"),
        "bundle-label": (f"{built['bundle']}:2013-2014", built["expert"], "2014-12-31"),
        "bundle-key": (f"{built['bundle']}:2013-2014@2013-12-31",
                       built["expert"] / "snapshots" / "2013-12-31", "2013-12-31"),
        "previous": ("previous", built["expert"], "2014-12-31"),
    }[kind]
    cfg = TrainExpertConfig(year=2015, data=built["data"], out=root / "experts" / "b",
                            init_from=spec, **TINY)
    state, plan = _start_state(cfg)
    assert _equal(state, _weights(folder))
    rec = plan.run_info.init_from
    assert rec is not None and rec.spec == spec
    assert rec.kind == {"previous": "run", "bundle-label": "bundle-expert",
                        "bundle-key": "bundle-expert"}.get(kind, kind)
    assert rec.sha256 == sha256_file(folder / "model.safetensors")
    assert rec.data_cutoff == cutoff
    assert (root / "experts" / "b" / rec.path).resolve() == folder.resolve()
    assert plan.run_info.data_cutoff == "2016-12-31"  # later than SRC's: its own data
    assert not (root / "experts" / "b").exists()  # planning wrote nothing


def test_a_chained_run_records_the_chain_in_every_artefact_and_takes_the_optimizer(
        built, tmp_path):
    root = built["root"]
    out = root / "experts" / "c"
    cfg = TrainExpertConfig(year=2015, data=built["data"], out=out, init_from="previous",
                            init_optimizer=True, **TINY)
    _, plan = _start_state(cfg)
    task = EXPERT_JOB.build_task(plan, DistEnv())
    src_ckpt = ckpt_state.latest_checkpoint(built["expert"])
    src_opt = ckpt_state.load_trainer_state(src_ckpt)["optimizer"]["state"]
    assert task.start_optimizer_state is not None
    got = task.start_optimizer_state["state"]
    assert got.keys() == src_opt.keys() and all(
        torch.equal(got[i]["exp_avg_sq"], src_opt[i]["exp_avg_sq"]) for i in got)
    train_expert(cfg)
    with_opt = _weights(out)
    plain = tmp_path / "plain"
    train_expert(cfg.model_copy(update={"out": plain, "init_optimizer": False,
                                        "init_from": str(built["expert"])}))
    # the moments change the first steps: the two runs end elsewhere
    assert not _equal(with_opt, _weights(plain))
    expert_sha = sha256_file(built["expert"] / "model.safetensors")
    for folder, cutoff in ((out, "2016-12-31"), (out / "snapshots" / "2015-12-31", "2015-12-31")):
        info = json.loads((folder / "run.json").read_text())
        assert info["data_cutoff"] == cutoff
        chain = info["init_from"]
        assert (chain["spec"], chain["sha256"], chain["data_cutoff"], chain["optimizer"]) == (
            "previous", expert_sha, "2014-12-31", True)
        assert chain["init_from"] is None  # the expert it started from started from scratch
    # a chain of two: from this run's snapshot, the record holds the snapshot's own chain
    snap = out / "snapshots" / "2015-12-31"
    _, plan2 = _start_state(TrainExpertConfig(year=2013, data=built["data"], out=tmp_path / "d",
                                              init_from=str(snap), **TINY))
    rec = plan2.run_info.init_from
    assert rec.kind == "snapshot" and rec.init_from is not None
    assert rec.init_from.sha256 == expert_sha


def test_previous_and_bundle_members_that_do_not_exist_are_refused(built, tmp_path, capsys):
    base = ["train-expert", "--data", built["data"], *TINY_FLAGS]
    code, _, err = run_cli(capsys, *base, "--year", "2013", "--out", tmp_path / "experts" / "a",
                           "--init-from", "previous")
    assert code == 2 and "2013-2014 is the first slice" in err and "--base --until" in err
    code, _, err = run_cli(capsys, *base, "--year", "2015", "--out", tmp_path / "experts" / "b",
                           "--init-from", "previous")
    assert code == 2 and "holds no expert run dir of the slice 2013-2014" in err
    code, _, err = run_cli(capsys, *base, "--year", "2015", "--out", tmp_path / "c",
                           "--init-from", f"{built['bundle']}:expert:2019")
    assert code == 2 and "has no expert 'expert:2019'" in err and "2013-2014@2014-12-31" in err
    assert not any(tmp_path.iterdir())


def test_init_optimizer_needs_a_trainer_checkpoint(built, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train-expert", "--year", "2015", "--data", built["data"],
                           "--out", tmp_path / "x", "--init-from",
                           built["base"] / "snapshots" / "2013-12-31", "--init-optimizer",
                           *TINY_FLAGS)
    assert code == 2 and "no trainer checkpoint" in err and "--init-optimizer" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_a_mismatched_source_is_refused_naming_the_tensor(built, tmp_path, capsys):
    flags = [f if f != "32" or i != 5 else "48" for i, f in enumerate(TINY_FLAGS)]  # --n-embd 48
    assert flags[4:6] == ["--n-embd", "48"]
    code, out, err = run_cli(capsys, "train-expert", "--year", "2015", "--data", built["data"],
                             "--out", tmp_path / "x", "--init-from", built["expert"], *flags)
    assert code == 2, out + err
    assert "wte.weight has shape (128, 32), this run's model (128, 48)" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    code, _, err = run_cli(capsys, "train-expert", "--year", "2015", "--data", built["data"],
                           "--out", tmp_path / "x", "--init-from", tmp_path / "nowhere",
                           *TINY_FLAGS)
    assert code == 2 and "is not a folder" in err and not (tmp_path / "x").exists()


def test_a_rerun_with_another_source_conflicts_on_init_from(built, tmp_path, capsys):
    args = ["train-expert", "--year", "2015", "--data", built["data"], "--out", tmp_path / "x",
            *TINY_FLAGS]
    assert run_cli(capsys, *args, "--init-from", built["expert"])[0] == 0
    before = sha256_file(tmp_path / "x" / "model.safetensors")
    code, _, err = run_cli(capsys, *args, "--init-from", built["base"])
    assert code == 2 and "--init-from (run has " in err and str(built["base"]) in err
    assert sha256_file(tmp_path / "x" / "model.safetensors") == before
    code, _, err = run_cli(capsys, *args)  # leaving it out changes what the run is too
    assert code == 2 and "--init-from (run has" in err and "flags give none" in err


def test_snapshot_cutoffs_are_raised_to_the_source_and_never_used_before_it(built, tmp_path,
                                                                            capsys):
    data, snap = built["data"], built["base"] / "snapshots" / "2013-12-31"
    out = tmp_path / "experts" / "x"
    code, stdout, err = run_cli(capsys, "train-expert", "--year", "2013", "--data", data,
                                "--out", out, "--init-from", snap, "--init-cutoff", "2014-06",
                                *TINY_FLAGS)
    assert code == 0, err
    lines = [ln for ln in stdout.splitlines() if "read text up to 2014-06-30" in ln]
    assert len(lines) == 1 and "snapshot 2013-12-31 takes that cutoff" in lines[0]
    info = read_run_info(out)
    assert info.snapshots == [{"data_cutoff": "2014-06-30", "path": "snapshots/2013-12-31"}]
    meta = json.loads((out / "snapshots" / "2013-12-31" / "snapshot.json").read_text())
    assert meta["data_cutoff"] == "2014-06-30"
    assert read_run_info(out / "snapshots" / "2013-12-31").data_cutoff == "2014-06-30"
    mix = TiMoE.from_expert_dirs([out], strategy="avg")
    with pytest.raises(TimoeError, match="first query date with an eligible expert is "
                       "2014-06-30"):  # nothing of this run before SRC's cutoff
        mix.usable_artefacts("2014-06-29")
    assert [a["data_cutoff"] for a in mix.artefacts_used("2014-06-30")] == ["2014-06-30"]
    assert [a["data_cutoff"] for a in mix.artefacts_used("2014-12-31")] == ["2014-12-31"]
    # a stated cutoff earlier than the recorded one is refused
    code, _, err = run_cli(capsys, "train-expert", "--year", "2013", "--data", data, "--out",
                           tmp_path / "y", "--init-from", built["base"], "--init-cutoff",
                           "2013", *TINY_FLAGS)
    assert code == 2 and "before" in err and "recorded data cutoff 2014-12-31" in err
    # from a base that read 2014 the 2013 snapshot would tie with the final: not made
    out2 = tmp_path / "experts" / "z"
    code, stdout, err = run_cli(capsys, "train-expert", "--year", "2013", "--data", data,
                                "--out", out2, "--init-from", built["base"], *TINY_FLAGS)
    assert code == 0, err
    assert "snapshot 2013-12-31 is not made" in stdout
    assert read_run_info(out2).snapshots == [] and not (out2 / "snapshots").exists()
    assert read_run_info(out2).data_cutoff == "2014-12-31"


# ------------------------------------------------------------ foreign folders

VOCAB = 50304


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpt2data")
    return make_data_dir(root, years=(2015, 2016), tokens_per_year=512, vocab_size=50257)


FOREIGN = {**TINY, "n_layer": 2, "batch_size": 2, "steps_per_stage": 1}


def _gptbase(folder: Path) -> GPT:
    from test_interop import _gptbase_folder

    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=32))
    _gptbase_folder(folder, model, store_lm_head=False)
    return model


def test_init_from_a_gptbase_folder_needs_a_stated_cutoff(gpt2_data, tmp_path, capsys):
    src = tmp_path / "paper-expert"
    _gptbase(src)
    flags = ["train-expert", "--year", "2015", "--data", gpt2_data, "--out", tmp_path / "x",
             "--init-from", src, "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
             "--seq-len", "32", "--device", "cpu"]
    code, _, err = run_cli(capsys, *flags)
    assert code == 2 and "--init-cutoff DATE" in err and "records no data cutoff" in err
    assert not (tmp_path / "x").exists()
    cfg = TrainExpertConfig(year=2015, data=gpt2_data, out=tmp_path / "x", init_from=str(src),
                            init_cutoff="2014", **FOREIGN)
    state, plan = _start_state(cfg)
    expected = read_foreign_model("gptbase", src).state_dict()
    assert _equal(state, {k: v for k, v in expected.items() if k != "lm_head.weight"})
    rec = plan.run_info.init_from
    assert (rec.kind, rec.data_cutoff) == ("gptbase", "2014-12-31")
    assert rec.sha256 == sha256_file(src / "model.safetensors")


def _gpt2_folder(folder: Path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=2,
                                     n_head=2, activation_function="gelu")
    torch.manual_seed(2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)


def test_init_from_a_gpt2_folder_pads_its_vocab_with_this_runs_init(gpt2_data, tmp_path):
    src = tmp_path / "gpt2"
    _gpt2_folder(src)
    cfg = TrainExpertConfig(year=2015, data=gpt2_data, out=tmp_path / "x", init_from=str(src),
                            init_cutoff="2019-02-14", **FOREIGN)
    state, plan = _start_state(cfg)
    theirs = read_foreign_model("hf", src).state_dict()
    rng.seed_all(cfg.seed)
    fresh = GPT(plan.model_config).state_dict()
    assert state["wte.weight"].shape == (VOCAB, 32)
    assert torch.equal(state["wte.weight"][:50257], theirs["wte.weight"])
    assert torch.equal(state["wte.weight"][50257:], fresh["wte.weight"][50257:])
    assert all(torch.equal(state[k], theirs[k]) for k in state if k != "wte.weight")
    assert plan.run_info.init_from.kind == "hf"
    assert plan.run_info.data_cutoff == "2019-02-14"  # the weights read text up to then


def test_init_from_hf_reads_the_local_hub_cache_offline(gpt2_data, tmp_path):
    pytest.importorskip("huggingface_hub")
    from test_interop import _fill_hub_cache

    src = tmp_path / "gpt2"
    _gpt2_folder(src)
    cache = tmp_path / "hub"
    _fill_hub_cache(cache, "someone/tiny-gpt2", {p.name: p for p in src.iterdir()})
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache),
               HF_HOME=str(tmp_path / "home"), PYTHONPATH=str(Path(__file__).parents[1]))
    out = tmp_path / "x"
    args = ["train-expert", "--year", "2015", "--data", gpt2_data, "--out", out, "--init-from",
            "hf:someone/tiny-gpt2", "--init-cutoff", "2019", "--n-layer", "2", "--n-head", "2",
            "--n-embd", "32", "--seq-len", "32", "--batch-size", "2", "--steps-per-stage", "1",
            "--device", "cpu"]
    done = subprocess.run([sys.executable, "-m", "timoe_cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    rec = read_run_info(out).init_from
    assert (rec.spec, rec.kind, rec.data_cutoff) == ("hf:someone/tiny-gpt2", "hf", "2019-12-31")
    assert rec.sha256 == sha256_file(src / "model.safetensors")
    assert read_run_info(out).data_cutoff == "2019-12-31"


def test_init_from_an_adapted_expert_stored_as_a_delta_starts_from_its_whole_weights(
        built, tmp_path):
    """coadapt --adapted-weights blocks stores each adapted expert as a delta from its
    parent (its header lists only what changed): --init-from reads it whole."""
    from timoe_core.config import CoadaptConfig
    from timoe_core.model.weights import load_model_weights
    from timoe_core.recipes.registry import coadapt

    bundle = coadapt(CoadaptConfig(experts=[built["root"] / "experts"], data=built["data"],
                                   out=tmp_path / "co", snapshot_dtype="bfloat16",
                                   adapted_weights="blocks", batch_size=8, steps_per_stage=1,
                                   device="cpu", log_every=100, eval_batches=1))
    folder = bundle / "experts" / "2013-2014@2014-12-31+adapted"
    assert (folder / "model.parent.json").is_file()  # a delta
    whole = load_model_weights(folder)
    assert "wte.weight" not in _weights(folder) and "wte.weight" in whole
    cfg = TrainExpertConfig(year=2015, data=built["data"], out=tmp_path / "b",
                            init_from=f"{bundle}:2013-2014@2014-12-31+adapted", **TINY)
    state, _ = _start_state(cfg)  # the header check passes: the shapes are the whole's
    assert state.keys() == whole.keys()
    assert all(torch.equal(state[k], whole[k].float()) for k in state)
