"""`timoe train-expert` through the CLI (in-process): run dirs, resume rules, bad input."""

from __future__ import annotations

import json
import re
from datetime import date

import pytest
import torch
import yaml
from helpers import make_data_dir, one_thread, run_cli  # noqa: F401 (fixture)

from timoe_core.data.manifest import load_manifest
from timoe_core.model.run_info import read_run_info
from timoe_core.model.weights import load_expert
from timoe_core.train import state as ckpt_state
from timoe_core.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 512
# These tests cover the single shuffled run (--snapshots none): one budget, --max-steps.
SMALL = ["--snapshots", "none", "--seq-len", "32", "--batch-size", "4", "--log-every", "5",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # Tokens for 2013, 2014 and 2017 only: slices 2015-2016, 2019-2020, ... are empty.
    return make_data_dir(tmp_path_factory.mktemp("cli"), years=(2013, 2014, 2017), vocab_size=VOCAB)


def train(capsys, data, out, flags: str = "") -> tuple[int, str, str]:
    """`timoe train-expert --data DATA --out OUT` with small settings and `flags`."""
    return run_cli(capsys, "train-expert", "--data", data, "--out", out, *SMALL, *flags.split())


def test_year_trains_its_slice_and_records_the_run(capsys, data, tmp_path):
    code, out, err = train(
        capsys, data, tmp_path / "e", "--year 2014 --max-steps 3 --n-layer 1 --n-embd 64 --n-head 2"
    )
    assert code == 0, err
    assert "trained" in out
    info = read_run_info(tmp_path / "e")
    assert (info.kind, info.slice_label) == ("expert", "2013-2014")
    assert (info.start_date, info.end_date) == ("2013-01-01", "2014-12-31")
    mc = info.model_config_
    assert (mc.n_layer, mc.n_embd, mc.n_head, mc.block_size, mc.vocab_size) == (1, 64, 2, 32, 512)
    files = {rel: e.sha256 for rel, e in load_manifest(data).files.items()
             if rel.split("/")[1] in ("2013.bin", "2014.bin")}
    assert info.data_files_sha256 == files and info.data_manifest_sha256 is None
    assert info.tokenizer == {"name": "gpt2", "vocab_size": VOCAB, "eot_token": VOCAB - 1}
    saved = yaml.safe_load((tmp_path / "e" / "config.yaml").read_text())
    assert saved["year"] == 2014 and saved["max_steps"] == 3 and saved["resume"] is True
    model, _ = load_expert(tmp_path / "e")  # what evaluate/router will load
    assert sum(p.numel() for p in model.parameters()) > 0


def test_expert_reads_only_its_slice(data, tmp_path):
    from timoe_core.config import TrainExpertConfig
    from timoe_core.train.expert import train_expert

    cfg = TrainExpertConfig(
        year=2017,
        data=data,
        out=tmp_path / "e",
        seq_len=32,
        batch_size=4,
        max_steps=4,
        snapshots="none",
        log_windows=True,
    )
    train_expert(cfg)
    lines = (tmp_path / "e" / "debug" / "windows-rank0.jsonl").read_text().splitlines()
    read = [i for line in lines for i in json.loads(line)["windows"]]
    from timoe_core.data.windows import TokenWindows

    windows = TokenWindows(data, "train", [2017, 2018], 32)  # the slice 2017-2018
    assert len(read) == 16 and max(read) < len(windows)
    assert read_run_info(tmp_path / "e").slice_label == "2017-2018"


def test_all_years_trains_a_dense_model_on_every_slice(capsys, data, tmp_path):
    code, _, err = train(capsys, data, tmp_path / "d", "--all-years --max-steps 2")
    assert code == 0, err
    info = read_run_info(tmp_path / "d")
    assert (info.kind, info.slice_label) == ("dense", "2013-2024")
    assert (info.start_date, info.end_date) == ("2013-01-01", "2024-12-31")


def test_max_tokens_sets_the_steps(capsys, data, tmp_path):
    code, _, err = train(capsys, data, tmp_path / "t", "--year 2013 --max-tokens 1000")
    assert code == 0, err
    steps = [r["step"] for r in read_metrics(tmp_path / "t") if r["type"] == "train"]
    assert steps[-1] == 8  # ceil(1000 / (4 windows x 32 tokens))


def test_rerun_resumes_and_extends(capsys, data, tmp_path):
    assert (
        train(capsys, data, tmp_path / "r", "--year 2013 --checkpoint-every 2 --max-steps 4")[0]
        == 0
    )
    # Another year of the same slice, a larger budget and a new lr do not conflict.
    code, out, err = train(
        capsys, data, tmp_path / "r", "--year 2014 --checkpoint-every 2 --max-steps 6 --lr 5e-4"
    )
    assert code == 0, err
    assert "resuming from" in out and "step 4/6" in out
    assert ckpt_state.latest_checkpoint(tmp_path / "r").step == 6
    # Done: the same command again has nothing to train and changes nothing.
    before = (tmp_path / "r" / "model.safetensors").stat().st_mtime_ns
    assert train(capsys, data, tmp_path / "r", "--year 2014 --max-steps 6")[0] == 0
    assert (tmp_path / "r" / "model.safetensors").stat().st_mtime_ns == before


def test_conflicting_resume_names_the_fields_and_writes_nothing(capsys, data, tmp_path):
    assert train(capsys, data, tmp_path / "r", "--year 2013 --max-steps 2")[0] == 0
    before = sorted(p.name for p in (tmp_path / "r").rglob("*"))
    code, _, err = train(
        capsys, data, tmp_path / "r", "--year 2017 --max-steps 4 --n-embd 64 --seed 3"
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    for field in ("slice", "--n-embd", "--seed", "2013-2014", "2017-2018"):
        assert field in err, field
    assert sorted(p.name for p in (tmp_path / "r").rglob("*")) == before


def test_no_resume_refuses_to_clobber_and_overwrite_starts_over(capsys, data, tmp_path):
    assert train(capsys, data, tmp_path / "r", "--year 2013 --max-steps 3")[0] == 0
    code, _, err = train(capsys, data, tmp_path / "r", "--year 2013 --no-resume")
    assert code == 2 and "--overwrite" in err and "already holds a run" in err
    code, _, err = train(
        capsys, data, tmp_path / "r", "--year 2017 --max-steps 2 --no-resume --overwrite"
    )
    assert code == 0, err
    assert read_run_info(tmp_path / "r").slice_label == "2017-2018"
    assert [c.step for c in ckpt_state.list_checkpoints(tmp_path / "r")] == [2]
    assert [r["step"] for r in read_metrics(tmp_path / "r") if r["type"] == "train"] == [1, 2]
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["overwrite"] is False  # rerunning the saved config never clobbers


def test_corrupt_checkpoint_is_an_error_not_a_restart(capsys, data, tmp_path):
    assert train(capsys, data, tmp_path / "r", "--year 2013 --max-steps 2")[0] == 0
    ckpt = ckpt_state.latest_checkpoint(tmp_path / "r")
    torch.save({"step": "garbage"}, ckpt.state_path)
    code, _, err = train(capsys, data, tmp_path / "r", "--year 2013 --max-steps 4")
    assert code == 2
    assert str(ckpt.state_path) in err and "corrupt" in err
    assert len(err.strip().splitlines()) == 1
    assert ckpt_state.latest_checkpoint(tmp_path / "r").step == 2  # nothing started over


def _no_wandb_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))


BAD_INPUTS = [
    ("--year 2030", ["--year 2030", "2013-2024", "2013, 2014, 2017"]),
    ("--year 2015", ["2015-2016", "no training tokens", "2013, 2014, 2017"]),
    ("--year 2013 --n-embd 100 --n-head 3", ["not divisible"]),
    ("--year 2013 --batch-size 5000", ["--batch-size", "has 254"]),
    ("--year 2013 --nproc-per-node 0", ["--nproc-per-node"]),
    ("--year 2013 --max-steps 3 --max-tokens 9", ["not both"]),
    ("", ["--year", "--all-years"]),
    ("--year 2013 --all-years", ["--year", "--all-years"]),
    ("--year 2013 --nnodes 2", ["--rdzv-endpoint"]),
    ("--year 2013 --wandb online", ["WANDB_API_KEY"]),
    ("--year 2013 --decay-shape exp", ["--decay-shape"]),
    ("--year 2013 --preset huge", ["--preset"]),
    pytest.param(
        "--year 2013 --device cuda",
        ["CUDA is not available"],
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only machine"),
    ),
]


@pytest.mark.parametrize(
    "args, words", BAD_INPUTS, ids=lambda v: (v or "none") if isinstance(v, str) else ""
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    capsys, data, tmp_path, monkeypatch, args, words
):
    _no_wandb_credentials(monkeypatch, tmp_path)
    out_dir = tmp_path / "run"
    code, out, err = train(capsys, data, out_dir, args)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert not out_dir.exists()


def test_bad_data_dirs_exit_2(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    for data_dir, words in (
        (tmp_path / "empty", "no manifest.json"),
        (tmp_path / "missing", "does not exist"),
    ):
        code, _, err = train(capsys, data_dir, tmp_path / "run", "--year 2013")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(capsys, "train-expert", "--year", "2013")
    assert code == 2 and "--data" in err
    assert not (tmp_path / "run").exists()


def test_out_dir_that_is_not_a_run_is_refused(capsys, data, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = train(capsys, data, tmp_path / "mine", "--year 2013 --max-steps 2")
    assert code == 2 and "not a timoe run dir" in err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_wandb_offline_resume_continues_the_same_run(capsys, data, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # conftest disables wandb by default
    args = "--year 2013 --max-steps 4 --wandb offline"
    assert train(capsys, data, tmp_path / "r", args + " --stop-at-step 2")[0] == 0
    run_id = (tmp_path / "r" / "wandb_run_id").read_text().strip()
    assert train(capsys, data, tmp_path / "r", args)[0] == 0
    assert (tmp_path / "r" / "wandb_run_id").read_text().strip() == run_id
    runs = sorted(p.name for p in (tmp_path / "r" / "wandb").glob("offline-run-*"))
    # wandb names a run's folder by its start second and id, with "-1" added when both
    # runs started within the same second
    pattern = rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run_id)}(-\d+)?"
    assert len(runs) == 2 and all(re.fullmatch(pattern, r) for r in runs), runs


# ------------------------------------------------- staged runs (the default)

# These tests cover the decay-branch snapshot kind (tests/test_snapshot_kinds.py the others).
STAGED = ["--seq-len", "32", "--batch-size", "4", "--log-every", "5", "--device", "cpu",
          "--steps-per-stage", "3", "--snapshot-kind", "decay"]


def test_staged_run_snapshots_each_year_but_the_last(capsys, data, tmp_path):
    import json

    code, _, err = run_cli(capsys, "train-expert", "--data", data, "--out", tmp_path / "s",
                           "--year", "2013", *STAGED)
    assert code == 0, err
    info = json.loads((tmp_path / "s" / "run.json").read_text())
    assert info["data_cutoff"] == "2014-12-31"
    assert info["snapshots"] == [{"data_cutoff": "2013-12-31", "path": "snapshots/2013-12-31"}]
    snap = json.loads((tmp_path / "s" / "snapshots/2013-12-31/snapshot.json").read_text())
    assert (snap["stage_end"], snap["stage_steps"], snap["decay_steps"]) == ("2013-12-31", 3, 1)
    # 3 + 3 main steps and the last stage's decay; the 2013 branch is off the main line.
    steps = [r["step"] for r in read_metrics(tmp_path / "s") if r["type"] == "train"]
    assert steps[-1] == 7


def test_staged_run_refuses_a_global_budget(capsys, data, tmp_path):
    code, _, err = run_cli(capsys, "train-expert", "--data", data, "--out", tmp_path / "s",
                           "--year", "2013", "--max-steps", "4", "--device", "cpu")
    assert code == 2
    assert "--steps-per-stage" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_staged_run_stopped_after_a_branch_resumes_to_the_same_weights(capsys, data, tmp_path):
    import torch

    from timoe_core.model.weights import load_model_weights

    def same(a, b):  # tensors, not file bytes (a safetensors header's order may vary)
        wa, wb = load_model_weights(a), load_model_weights(b)
        return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    args = ["train-expert", "--data", data, "--year", "2013", *STAGED]
    assert run_cli(capsys, *args, "--out", tmp_path / "a")[0] == 0
    for stop in ("2", "4"):  # before the 2013 branch, and after it
        b = tmp_path / f"b{stop}"
        assert run_cli(capsys, *args, "--out", b, "--stop-at-step", stop)[0] == 0
        assert run_cli(capsys, *args, "--out", b)[0] == 0
        assert same(tmp_path / "a", b)
        snap = "snapshots/2013-12-31"
        assert same(tmp_path / "a" / snap, b / snap)


# ------------------------------------------------- cutoffs by period (--cutoff-every)


@pytest.fixture(scope="module")
def dated_data(tmp_path_factory):
    # 2013-2014, documents of 256 tokens dated across each year: 16 per year, 127 windows
    return make_data_dir(tmp_path_factory.mktemp("dated"), years=(2013, 2014), vocab_size=VOCAB,
                         doc_dates="spread")


def test_monthly_stages_snapshot_every_month_end_with_new_windows(capsys, dated_data, tmp_path):
    """With the defaults (a stage per month, averaged snapshots): stage k = month k, it
    reads the windows dated <= its end; a month with no new windows, or fewer up to its
    end than one step, gets no stage; a snapshot at every month end but the last, an
    average at no extra step; snapshot.json and run.json record the month end."""
    import numpy as np

    from timoe_core.data.manifest import INDEX_DTYPE
    from timoe_core.data.windows import TokenWindows
    from timoe_core.io import sha256_file

    code, _, err = run_cli(capsys, "train-expert", "--data", dated_data, "--out", tmp_path / "m",
                           "--year", "2013", "--seq-len", "32", "--batch-size", "4",
                           "--log-every", "50", "--device", "cpu", "--n-layer", "1",
                           "--n-embd", "16", "--n-head", "2")
    assert code == 0, err
    windows = TokenWindows(dated_data, "train", [2013, 2014], 32)
    ends, counts = [], []
    from timoe_core.timeslices import period_ends
    for end in period_ends(date(2013, 1, 1), date(2014, 12, 31), "month"):
        upto = windows.windows_up_to(end)
        if upto >= 4 and upto > (counts[-1] if counts else 0):
            ends.append(end.isoformat())
            counts.append(upto)
    assert 20 <= len(ends) <= 24  # 16 documents a year: a month or two has none
    info = json.loads((tmp_path / "m" / "run.json").read_text())
    assert info["data_cutoff"] == ends[-1] == "2014-12-31"
    assert [s["data_cutoff"] for s in info["snapshots"]] == ends[:-1]
    prev = 0
    for end, upto in zip(ends[:-1], counts):
        folder = tmp_path / "m" / "snapshots" / end
        snap = json.loads((folder / "snapshot.json").read_text())
        assert snap["stage_end"] == snap["data_cutoff"] == end
        assert (snap["kind"], snap["decay_steps"]) == ("average", 0)
        assert snap["stage_steps"] == max(1, (upto - prev) // 4)  # its new windows, one pass
        prev = upto
        # what it read: whole years before its end, and of its own year the documents
        # dated up to its end, hashed (so a build with later documents records the same)
        files = json.loads((folder / "run.json").read_text())["data_files_sha256"]
        year = int(end[:4])
        whole = {f"{s}/2013.bin" for s in ("train", "val")} if end >= "2013-12-31" else set()
        parts = {k for k in files if "@" in k}
        assert set(files) == whole | parts
        if end.endswith("12-31"):
            assert not parts and year == 2013 and set(files) == {"train/2013.bin", "val/2013.bin"}
            continue
        part = f"train/{year}.bin@{end}"
        assert part in parts and parts <= {part, f"val/{year}.bin@{end}"}
        index = np.fromfile(dated_data / "train" / f"{year}.idx", dtype=INDEX_DTYPE)
        day_after = np.datetime64(end) + np.timedelta64(1, "D")
        n = int(index["tokens"][index["time_us"] < day_after.astype("datetime64[us]").astype(
            np.int64)].sum())
        blob = (dated_data / "train" / f"{year}.bin").read_bytes()[: 2 * n]
        import hashlib
        assert files[part] == hashlib.sha256(blob).hexdigest()
        assert sha256_file(folder / "model.safetensors") == snap["sha256"]


def test_cutoff_every_quarter_and_year_make_fewer_stages(capsys, dated_data, tmp_path):
    common = ["train-expert", "--data", dated_data, "--year", "2013", "--seq-len", "32",
              "--batch-size", "4", "--log-every", "50", "--device", "cpu", "--n-layer", "1",
              "--n-embd", "16", "--n-head", "2", "--steps-per-stage", "1"]
    for every, expected in (("quarter", [f"{y}-{md}" for y in (2013, 2014) for md in
                                          ("03-31", "06-30", "09-30", "12-31")]),
                            ("year", ["2013-12-31", "2014-12-31"])):
        code, _, err = run_cli(capsys, *common, "--cutoff-every", every, "--out", tmp_path / every)
        assert code == 0, err
        info = json.loads((tmp_path / every / "run.json").read_text())
        assert [s["data_cutoff"] for s in info["snapshots"]] + [info["data_cutoff"]] == expected
    # a rerun with other periods would mix two runs' stages: refused, naming the option
    code, _, err = run_cli(capsys, *common, "--cutoff-every", "month", "--out", tmp_path / "year")
    assert code == 2 and "--cutoff-every (run has year, flags give month)" in err
    code, _, err = run_cli(capsys, *common, "--cutoff-every", "week", "--out", tmp_path / "w")
    assert code == 2 and "--cutoff-every" in err and not (tmp_path / "w").exists()
    code, _, err = run_cli(capsys, *common[:-2], "--snapshots", "none", "--max-steps", "1",
                           "--cutoff-every", "year", "--out", tmp_path / "n")
    assert code == 2 and "--cutoff-every has no effect" in err
