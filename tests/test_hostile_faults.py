"""Hostile input and real faults, round three: lock files and outputs that are not what
they seem, resumes over a changed or broken past, metadata of the wrong shape, merges
that must not happen, numbers the parser cannot hold, flags that would be ignored,
foreign spellings and unsafe advice. One test (or a few) per class of
docs/bad-inputs.md; scripts/hostile_sweep.py runs many more cases through the CLI.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from helpers import make_data_dir, make_expert_runs, run_cli

from timoe_core.errors import TimoeError
from timoe_core.lock import lock_path, output_lock


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under `root`: a file's bytes, a link's target, a folder's name."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = "dir"
    return out


# ------------------------------------------------------------ lock files


@pytest.mark.parametrize("kind", ["symlink-to-user-file", "dangling-symlink", "folder",
                                  "hard-link", "user-text", "fifo"])
def test_a_lock_file_that_is_not_a_plain_file_we_made_is_refused_naming_it(tmp_path, kind):
    out = tmp_path / "run"
    lock = lock_path(out)
    mine = tmp_path / "precious.txt"
    mine.write_text("my thesis\n")
    if kind == "symlink-to-user-file":
        lock.symlink_to(mine)
    elif kind == "dangling-symlink":
        lock.symlink_to(tmp_path / "nowhere")
    elif kind == "folder":
        lock.mkdir()
        (lock / "x").write_text("x")
    elif kind == "hard-link":
        os.link(mine, lock)
    elif kind == "user-text":
        lock.write_text("this is not a lock line at all, it is a user's file\n")
    else:
        os.mkfifo(lock)
    before = _tree(tmp_path)
    with pytest.raises(TimoeError, match=rf"its lock file {lock} is .*not a lock file timoe "
                                         r"made"):
        with output_lock(out):
            pass
    assert _tree(tmp_path) == before  # the user's file, the link, all untouched
    assert mine.read_text() == "my thesis\n"


def test_a_lock_file_through_the_cli_is_one_line_and_the_users_file_is_kept(tmp_path, capsys):
    data = make_data_dir(tmp_path / "d", years=(2013,), vocab_size=128, seq_len=16)
    mine = tmp_path / "precious.txt"
    mine.write_text("my thesis\n")
    out = tmp_path / "run"
    lock_path(out).symlink_to(mine)
    code, _, err = run_cli(capsys, "train-expert", "--year", "2013", "--data", data, "--out",
                           out, "--max-steps", "1", "--snapshots", "none", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "symbolic link" in err and mine.read_text() == "my thesis\n" and not out.exists()


def test_a_stale_lock_we_made_is_still_taken_over(tmp_path):
    out = tmp_path / "run"
    lock_path(out).write_text(f"{socket.gethostname()} 999999999 2020-01-01T00:00:00Z\n")
    with output_lock(out) as lock:
        assert lock.read_text().split()[1] == str(os.getpid())
    assert not lock_path(out).exists()


# ------------------------------------------------------------ odd output paths


def _odd_out(tmp_path: Path, odd: str) -> Path:
    """An --out path of the given oddity, built in tmp_path/sandbox."""
    box = tmp_path / "sandbox"
    box.mkdir()
    out = box / "out"
    if odd == "dangling-symlink":
        out.symlink_to(box / "nowhere")
    elif odd == "symlink-loop":
        out.symlink_to(box / "loop")
        (box / "loop").symlink_to(out)
    elif odd == "symlink-to-user-file":
        (box / "mine.txt").write_text("mine")
        out.symlink_to(box / "mine.txt")
    elif odd == "fifo":
        os.mkfifo(out)
    elif odd == "under-dangling-symlink":
        (box / "parent").symlink_to(box / "gone")
        out = box / "parent" / "out"
    elif odd == "under-a-file":
        (box / "parent").write_text("mine")
        out = box / "parent" / "out"
    return out


ODD_OUTS = ["dangling-symlink", "symlink-loop", "symlink-to-user-file", "fifo",
            "under-dangling-symlink", "under-a-file"]


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    data = make_data_dir(root / "data", years=(2013, 2014), vocab_size=128, seq_len=16)
    experts = make_expert_runs(root / "experts", ["2013-2014", "2015-2016"])
    return {"data": data, "experts": root / "experts", "e13": experts["2013-2014"]}


def _command(name: str, inputs: dict[str, Path], out: Path) -> list:
    return {
        "prepare-data": ["prepare-data", "--source", "builtin", "--builtin-docs-per-year", "3",
                         "--seq-len", "16", "--workers", "1", "--out", out],
        "prepare-data-merge": ["prepare-data", "--merge", inputs["data"], "--out", out],
        "train-expert": ["train-expert", "--year", "2013", "--data", inputs["data"], "--out", out,
                         "--max-steps", "1", "--snapshots", "none", "--device", "cpu"],
        "train-router-avg": ["train-router", "--strategy", "avg", "--experts",
                             inputs["experts"], "--out", out],
        "export": ["export", "--model", inputs["e13"], "--out", out],
        "evaluate-json": ["evaluate", "--model", inputs["e13"], "--tsqa", "builtin",
                          "--max-items", "1", "--device", "cpu", "--json", out],
        "evaluate-plot": ["evaluate", "--model", inputs["e13"], "--tsqa", "builtin",
                          "--max-items", "1", "--device", "cpu", "--plot",
                          out.with_name(out.name + ".png") if "under" in str(out) else out],
    }[name]


@pytest.mark.parametrize("odd", ODD_OUTS)
@pytest.mark.parametrize("command", ["prepare-data", "prepare-data-merge", "train-expert",
                                     "train-router-avg", "export", "evaluate-json"])
def test_an_odd_output_path_is_refused_in_one_line_before_any_work(
    tmp_path, capsys, small_inputs, command, odd
):
    out = _odd_out(tmp_path, odd)
    before = _tree(tmp_path)
    code, _, err = run_cli(capsys, *_command(command, small_inputs, out))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and str(out) in err
    assert _tree(tmp_path) == before  # nothing written, no link replaced or written through


@pytest.mark.parametrize("command", ["prepare-data", "train-router-avg", "export"])
def test_a_link_to_an_empty_folder_as_out_writes_into_that_folder(tmp_path, capsys,
                                                                  small_inputs, command):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    code, _, err = run_cli(capsys, *_command(command, small_inputs, link))
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link is kept
    assert any(real.iterdir())  # the output is in the folder it points at
