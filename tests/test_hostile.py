"""Hostile input and real faults, one test (or a few) per class of docs/bad-inputs.md's
"Hostile input and real faults" table. Small and mostly in-process (about 30 s in all
on 2 cores); scripts/hostile_sweep.py runs many more cases of each class through the
real CLI in subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_data_dir, make_expert_runs, run_cli
from pydantic import ValidationError

from timoe_core.config import EvaluateConfig, GenerateConfig, TrainExpertConfig, resolve_config
from timoe_core.data.batches import SourceOptions
from timoe_core.data.dates import DateError, parse_year
from timoe_core.data.manifest import load_manifest
from timoe_core.data.sources import open_source
from timoe_core.errors import TimoeError
from timoe_core.io import check_output_files, write_failure_as_os_error
from timoe_core.lock import lock_path, output_lock
from timoe_core.model.gpt import GPTConfig
from timoe_core.model.run_info import read_run_info
from timoe_core.model.weights import check_weights_usable, save_safetensors
from timoe_core.timeslices import parse_query_date

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# ------------------------------------------------------------ resource bombs


def test_resource_bombs_are_refused_before_they_grow(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    bomb.write_text("\n".join(lines) + "\n")  # 9**9 strings if expanded
    t = time.perf_counter()
    with pytest.raises(TimoeError, match="anchors .* are not allowed"):
        resolve_config(TrainExpertConfig, bomb, {})
    assert time.perf_counter() - t < 1.0
    huge = tmp_path / "huge.toml"
    huge.write_text("# padding\n" * 200_000)
    with pytest.raises(TimoeError, match=r"huge.toml is 2000000 bytes, more than a config"):
        resolve_config(TrainExpertConfig, huge, {})
    # model sizes: checked by the config, before any tensor is allocated
    for field, value in (("block_size", 10**12), ("n_layer", 10**6), ("vocab_size", 10**9)):
        with pytest.raises(ValidationError, match=field):
            GPTConfig(**{field: value})
    with pytest.raises(ValidationError, match="parameters"):
        GPTConfig(n_layer=1000, n_embd=8192, n_head=8)
    run = make_expert_runs(tmp_path / "runs", ["2013-2014"])["2013-2014"]
    info = json.loads((run / "run.json").read_text())
    info["model_config"]["block_size"] = 10**12
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(TimoeError, match=r"run.json is corrupt \(model_config.block_size: "
                                         r"Input should be less than or equal to 131072"):
        read_run_info(run)


# ------------------------------------------------------------ two writers


def _holder(target: Path) -> subprocess.Popen:
    code = ("import sys, time; from timoe_core.lock import output_lock; "
            "cm = output_lock(sys.argv[1]); cm.__enter__(); print('held', flush=True); "
            "time.sleep(60)")  # fmt: skip
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], env=ENV, cwd=REPO,
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holder_and_a_stale_lock_is_taken_over(
    tmp_path, capsys
):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        with pytest.raises(TimoeError, match=rf"being written by another timoe run \(pid "
                                             rf"{holder.pid} on host {socket.gethostname()}"):
            with output_lock(out):
                pass
        # through the CLI: exit 2, one line, nothing written
        data = make_data_dir(tmp_path / "d", years=(2013,), vocab_size=128, seq_len=16)
        code, _, err = run_cli(capsys, "train-expert", "--year", "2013", "--data", data,
                               "--out", out, "--max-steps", "1", "--device", "cpu")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"pid {holder.pid}" in err and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died (kill -9): its lock file stays, naming a dead pid; taken over
    assert lock_path(out).exists()
    with output_lock(out) as lock:
        assert lock.read_text().split()[:2] == [socket.gethostname(), str(os.getpid())]
        with output_lock(out):  # re-entrant in one process
            pass
    assert not lock_path(out).exists()  # released: no lock file left behind


# ------------------------------------------------------------ a full disk


def test_torch_saves_runtime_error_on_a_full_disk_is_the_oserror_it_is(tmp_path, monkeypatch):
    from timoe_core.train import state as ckpt_state

    def save_weights(directory):
        (directory / "model.safetensors").write_bytes(b"w")

    minimal = {"tokens": 0, "elapsed": 0.0, "data": {}, "optimizer": {}, "schedule": {},
               "rng": [], "world_size": 1}  # fmt: skip
    ckpt_state.write_checkpoint(tmp_path, 2, save_weights, minimal)

    def full(obj, path, *a, **k):  # what torch.save does when the disk fills up
        Path(path).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 25 vs 13")

    monkeypatch.setattr(ckpt_state.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(9, 9, 0))
    with pytest.raises(TimoeError, match="No space left on device.*step 2 is intact"):
        ckpt_state.write_checkpoint(tmp_path, 4, save_weights, minimal)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]
    other = write_failure_as_os_error(RuntimeError("shape mismatch"), tmp_path)
    monkeypatch.undo()
    assert other is None or other.errno == 28  # a non-write RuntimeError stays a bug
    # a plain write (numpy's tofile, write_bytes) on a full disk names no file: the
    # atomic writer names its output, and leaves no temp file
    from timoe_core.io import atomic_path

    with pytest.raises(OSError, match=r"No space left on device: '.*chunk-000000.f16'"):
        with atomic_path(tmp_path / "chunk-000000.f16"):
            raise OSError(28, os.strerror(28))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".chunk*"))


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


def test_prepare_data_on_a_really_full_disk_is_exit_2_and_leaves_nothing(tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "200k"):
        pytest.skip("cannot mount a tmpfs (needs root); the fault hooks cover the rest")
    try:
        code, _, err = run_cli(capsys, "prepare-data", "--source", "builtin", "--out",
                               disk / "data", "--seq-len", "32", "--workers", "1",
                               "--builtin-docs-per-year", "100")  # fmt: skip
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"No space left on device ({disk / 'data'})" in err
        assert list(disk.iterdir()) == []  # no staging folder, no lock file
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ------------------------------------------------------------ rich markup


@pytest.mark.parametrize("name", ["a[/]b", "[bold]x", "hf:a:smile:c"])
def test_user_text_is_printed_verbatim(tmp_path, capsys, name):
    code, _, err = run_cli(capsys, "evaluate", "--model", tmp_path / name, "--tsqa", "builtin")
    assert code == 2 and "Traceback" not in err
    assert f"{tmp_path / name} does not exist" in err, err


# ------------------------------------------------------------ dates


def test_dates_are_read_correctly_or_refused():
    for value, year in [(20190401, 2019), ("20190401", 2019), (2016.5, 2016), ("2016.5", 2016),
                        ("20150101T10:00:00", 2015), (1554112800, 2019), (1554112800123, 2019)]:
        assert parse_year(value) == year, value
    for value in (12345, "12345", 0, "0000", -5, 20190231, 99_999_999):
        with pytest.raises(DateError):
            parse_year(value)  # never read as Unix seconds (1970)
    assert parse_query_date("20140601").isoformat() == "2014-06-01"
    for bad in ("0000", "20170", "2016.5"):
        with pytest.raises(TimoeError, match=f"bad query date '{bad}'"):
            parse_query_date(bad)


def test_a_tsqa_year_out_of_range_names_the_item_and_field(tmp_path):
    from timoe_core.evaluate.tsqa import load_tsqa

    for year in (0, 20170, 2016.5):
        item = {"question": "Q", "choices": ["a", "b", "c", "d"], "answer": 0,
                "labels": ["correct", "past", "future", "irrelevant"], "year": year}
        (tmp_path / "qa.json").write_text(json.dumps([item, item]))
        with pytest.raises(TimoeError, match=r"item 0, field 'year': must be a year"):
            load_tsqa(str(tmp_path / "qa.json"))


# ------------------------------------------------------- non-finite numbers


def test_non_finite_and_out_of_range_numbers_are_refused_at_the_boundary(tmp_path):
    cases = [(TrainExpertConfig, {"lr": float("inf")}, "--lr: Input should be a finite number"),
             (TrainExpertConfig, {"weight_decay": float("nan")}, "--weight-decay"),
             (TrainExpertConfig, {"seed": -5}, "--seed"),
             (TrainExpertConfig, {"seed": 2**70}, "--seed"),
             (GenerateConfig, {"temperature": 1e-45}, "--temperature 1e-45 is too small"),
             (EvaluateConfig, {"batch_size": 0}, "--batch-size")]  # fmt: skip
    for model, flags, words in cases:
        flags = {"year": 2013, **flags} if model is TrainExpertConfig else flags
        with pytest.raises(TimoeError, match=words.replace("(", r"\(")):
            resolve_config(model, None, flags)
    (tmp_path / "c.yaml").write_text("weight_decay: .inf\n")
    with pytest.raises(TimoeError, match="--weight-decay: Input should be a finite number"):
        resolve_config(TrainExpertConfig, tmp_path / "c.yaml", {"year": 2013})
    good = {"w": torch.zeros(2, 2)}
    check_weights_usable(good, Path("m"), "fix")
    with pytest.raises(TimoeError, match="w holds 1 NaN or infinite values"):
        check_weights_usable({"w": torch.tensor([0.0, float("nan")])}, Path("m"), "fix")
    with pytest.raises(TimoeError, match="dtype int32"):
        check_weights_usable({"w": torch.zeros(2, dtype=torch.int32)}, Path("m"), "fix")


# --------------------------------------------------- destructive conveniences


def test_overwrite_deletes_only_what_the_tool_wrote(tmp_path, capsys):
    data = make_data_dir(tmp_path / "data", years=(2013,), vocab_size=128, seq_len=16)
    run = make_expert_runs(data / "runs", ["2013-2014"])["2013-2014"]
    code, _, err = run_cli(capsys, "prepare-data", "--out", data, "--overwrite",
                           "--builtin-docs-per-year", "2", "--workers", "1")  # fmt: skip
    assert code == 2 and "holds" in err and "prepare-data did not write" in err, err
    assert (run / "model.safetensors").is_file()

    from timoe_core.demo.outdir import _remove_demo_outputs

    demo = tmp_path / "demo"
    (demo / "experts").mkdir(parents=True)
    (demo / "notes.txt").write_text("mine")
    with pytest.raises(TimoeError, match="notes.txt, which the demo did not write"):
        _remove_demo_outputs(demo)
    assert (demo / "notes.txt").is_file() and (demo / "experts").is_dir()
    (demo / "notes.txt").unlink()
    _remove_demo_outputs(demo)
    assert list(demo.iterdir()) == []

    def ours(p: Path) -> bool:
        return False

    with pytest.raises(TimoeError, match="--plot .*x.png is also the --json file"):
        check_output_files({"--json": tmp_path / "x.png", "--plot": tmp_path / "x.png"}, {},
                           {"--json": ours, "--plot": ours})
    with pytest.raises(TimoeError, match="would overwrite the --model input"):
        check_output_files({"--json": run / "run.json"}, {"--model": run}, {"--json": ours})


# ------------------------------------------------------- metadata cross-check


def test_a_bundle_whose_slice_labels_were_swapped_is_refused(tmp_path):
    from timoe_core.model.mixture import TiMoE

    runs = make_expert_runs(tmp_path / "runs", ["2013-2014", "2017-2018"])
    bundle = tmp_path / "bundle"
    TiMoE.from_expert_dirs(list(runs.values()), strategy="avg").save_bundle(bundle)
    spec = json.loads((bundle / "timoe.json").read_text())
    a, b = spec["experts"]
    for k in ("slice_label", "start_date", "end_date"):
        a[k], b[k] = b[k], a[k]
    spec["experts"] = [b, a]
    (bundle / "timoe.json").write_text(json.dumps(spec))
    mix = TiMoE.from_bundle(bundle)
    with pytest.raises(TimoeError, match=r"run.json disagrees: slice \(run.json has "
                                         r"'2017-2018', the bundle records '2013-2014'\)"):
        mix.expert("2013-2014")


# ------------------------------------------------------------------ messages


def test_messages_name_the_field_the_line_and_do_not_promise_a_resume(tmp_path):
    from timoe_cli.common import interrupted_line

    run = make_expert_runs(tmp_path / "runs", ["2013-2014"])["2013-2014"]
    info = json.loads((run / "run.json").read_text())
    info["model_config"]["n_layer"] = "many"
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(TimoeError, match=r"\(model_config.n_layer: Input should be a valid "
                                         r"integer"):
        read_run_info(run)
    assert "resume" not in interrupted_line("evaluate")
    assert "resume" not in interrupted_line("generate")
    assert "resume" in interrupted_line("train_expert")
    csv = tmp_path / "r.csv"
    csv.write_text("text,date\n" + "".join(f"doc {i},2015\n" for i in range(30)) + "x,1,2\n")
    with pytest.raises(TimoeError, match=r"r.csv:32 \("):
        for _ in open_source(str(csv), SourceOptions()).batches():
            pass


def test_ctrl_c_during_the_imports_is_exit_130_without_a_traceback():
    p = subprocess.Popen([sys.executable, "-m", "timoe_cli", "evaluate", "--model", "x"],
                         env=ENV, cwd=REPO, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err.strip() == "interrupted", err


# ------------------------------------------- found by reading the code


def test_a_question_ending_in_whitespace_is_scored_on_the_tokens_the_model_sees():
    from timoe_core.data.builtin.generator import TSQAItem
    from timoe_core.evaluate.tsqa.scoring import _encode_item
    from timoe_core.tokenizer import get_tokenizer

    tok = get_tokenizer()
    item = TSQAItem(question="The office was held by ", choices=["Ann", "Bob", "Cid", "Dee"],
                    answer=0, labels=["correct", "past", "future", "irrelevant"], year=2014)
    (seq, n), *_ = _encode_item(item, tok, 128, 0)
    assert seq == [tok.eot_token, *tok.encode("The office was held by Ann")]
    assert n == len(tok.encode(" Ann"))


def test_the_log_prob_cache_key_changes_with_a_same_size_edit(tmp_path):
    from timoe_core.train.logprob_cache import token_files_fingerprint

    data = make_data_dir(tmp_path / "d", years=(2013, 2014), vocab_size=128, seq_len=16)
    before = token_files_fingerprint(data, "train", [2013, 2014])
    f = data / "train" / "2014.bin"
    blob = bytearray(f.read_bytes())
    blob[len(blob) // 2] ^= 1
    stat = f.stat()
    f.write_bytes(bytes(blob))
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime back
    after = token_files_fingerprint(data, "train", [2013, 2014])
    assert before[0] == after[0] and before[1] != after[1]
    assert before[1][1] == after[1][1]  # same size


def test_weight_files_are_byte_reproducible(tmp_path):
    state = {"b.weight": torch.randn(4, 3), "a.bias": torch.ones(3, dtype=torch.float16)}
    meta = {"format": "pt", "timoe_version": "x", "z": "1", "k": "2"}
    digests = set()
    for i in range(8):  # safetensors' own metadata order differs between calls
        save_safetensors(state, tmp_path / f"{i}.safetensors", meta)
        digests.add(hashlib.sha256((tmp_path / f"{i}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    from safetensors.torch import load_file

    back = load_file(str(tmp_path / "0.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_years_without_a_held_out_window_are_named(tmp_path):
    data = make_data_dir(tmp_path / "d", years=(2013, 2014), vocab_size=128, seq_len=16)
    m = load_manifest(data)
    assert m.years_without_held_out_windows() == [
        int(y) for y, s in m.years.items() if s.train.tokens and (s.val.tokens - 1) // 16 == 0
    ]
    m.years["2014"].val.tokens = 10  # fewer than one window of 17 tokens
    assert 2014 in m.years_without_held_out_windows()
    assert np.uint16  # the token files are uint16 (the manifest's vocab bound)
