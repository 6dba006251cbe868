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
