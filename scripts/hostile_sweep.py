"""The hostile-input sweep: many bad inputs and real faults, through the real CLI.

Each case runs `python -m timoe_cli ...` in a subprocess and HOLDS when:
  - the exit code is the expected one (2 for bad input, 130 for Ctrl-C, 0 when the
    input is valid and must be read correctly),
  - for a non-zero exit, stderr is exactly one line, names what the case says it must,
  - no traceback anywhere on stdout or stderr,
  - nothing half-written: for a refused case, the sandbox tree (every path, size and
    mtime) is the same after as before; cases that must succeed check their output.

Classes covered (docs/bad-inputs.md, "Hostile input and real faults"): resource bombs,
two writers one output, a full disk (a real tmpfs when run as root), text that the
printer would interpret, dates misread, non-finite and out-of-range numbers,
destructive conveniences, metadata not cross-checked, messages, TSQA whitespace; and,
in round_three(): lock files that are not plain files, odd output paths, resumes over a
changed or broken past, metadata of the wrong shape, merges that must not happen,
numbers the parser cannot hold, flags that would be ignored, foreign spellings of our
options, and messages that give unsafe advice.

    python scripts/hostile_sweep.py              # every case, prints "N of M hold"
    python scripts/hostile_sweep.py -k lock -v   # cases whose id holds "lock", verbose
    python scripts/hostile_sweep.py --json out.json

Exit code 0 when every case held, 1 otherwise. About 4 minutes on 2 busy CPU cores;
it is not part of the pytest suite (tests/test_hostile.py runs a few of its classes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ)
ENV.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken_cache"))
ENV["PYTHONPATH"] = str(REPO) + os.pathsep + ENV.get("PYTHONPATH", "")
ENV.setdefault("OMP_NUM_THREADS", "1")
PY = sys.executable


def cli(*args: object, env: dict | None = None, timeout: float = 300
        ) -> subprocess.CompletedProcess:  # fmt: skip
    return subprocess.run(
        [PY, "-m", "timoe_cli", *map(str, args)], cwd=REPO, env={**ENV, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def must(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise SystemExit(f"fixture {what} failed ({proc.returncode}):\n{proc.stderr}")


# ------------------------------------------------------------------ fixtures

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--seq-len", "32",
        "--batch-size", "2", "--device", "cpu", "--eval-batches", "1"]  # fmt: skip


@dataclass
class Fixtures:
    root: Path
    data: Path
    experts: Path
    bundle: Path
    staged: Path  # a finished staged run of 2013-2014: one snapshot, as of 2013-12-31

    @property
    def e13(self) -> Path:
        return self.experts / "2013-2014"

    @property
    def e15(self) -> Path:
        return self.experts / "2015-2016"


def build_fixtures(root: Path) -> Fixtures:
    data = root / "data"
    must(cli("prepare-data", "--source", "builtin", "--out", data, "--seq-len", "32",
             "--builtin-docs-per-year", "30", "--val-fraction", "0.2", "--workers", "1",
             "--end-year", "2016"), "prepare-data")  # fmt: skip
    experts = root / "experts"
    for year, label in ((2013, "2013-2014"), (2015, "2015-2016")):
        must(cli("train-expert", "--year", year, "--data", data, "--out", experts / label,
                 "--max-steps", "2", "--snapshots", "none", *TINY),
             f"train-expert {year}")  # fmt: skip
    bundle = root / "bundle"
    must(cli("train-router", "--strategy", "avg", "--experts", experts, "--out", bundle),
         "train-router avg")
    staged = root / "staged" / "run"
    must(cli(*_staged_argv(data, staged)), "train-expert staged")
    return Fixtures(root, data, experts, bundle, staged)


def _staged_argv(data: Path, out: Path, *extra: object) -> list:
    return ["train-expert", "--year", "2013", "--data", data, "--out", out,
            "--steps-per-stage", "2", *TINY, *extra]  # fmt: skip


# ------------------------------------------------------------------ the cases


@dataclass
class Ctx:
    fx: Fixtures
    tmp: Path  # the case's sandbox
    holders: list[subprocess.Popen] = field(default_factory=list)

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        return p

    def copy(self, src: Path, name: str) -> Path:
        return Path(shutil.copytree(src, self.tmp / name))

    def hold_lock(self, target: Path) -> int:
        """Another process holding `target`'s write lock (as a running job would)."""
        code = ("import sys, time; from timoe_core.lock import output_lock; "
                "cm = output_lock(sys.argv[1]); cm.__enter__(); print('held', flush=True); "
                "time.sleep(600)")  # fmt: skip
        p = subprocess.Popen([PY, "-c", code, str(target)], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        self.holders.append(p)
        return p.pid


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list]  # the CLI arguments (after setting up files)
    code: int = 2
    words: list[str] = field(default_factory=list)  # stderr must hold each
    check: Callable[[Ctx, subprocess.CompletedProcess], str | None] | None = None
    env: dict = field(default_factory=dict)
    run: Callable[[Ctx, list], subprocess.CompletedProcess] | None = None  # custom runner
    unchanged: bool = True  # a refused case writes nothing


def _train(c: Ctx, *extra: object, out: Path | None = None) -> list:
    return ["train-expert", "--year", "2013", "--data", c.fx.data, "--out",
            out or c.tmp / "out", "--max-steps", "2", "--snapshots", "none", *TINY,
            *extra]  # fmt: skip


def _eval(c: Ctx, model: Path | None = None, *extra: object) -> list:
    return ["evaluate", "--model", model or c.fx.e13, "--tsqa", "builtin", "--max-items", "4",
            "--device", "cpu", *extra]  # fmt: skip


def _gen(c: Ctx, model: Path | None = None, *extra: object) -> list:
    return ["generate", "--model", model or c.fx.e13, "--prompt", "The", "--max-new-tokens",
            "2", "--device", "cpu", *extra]  # fmt: skip


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _run_json(c: Ctx, edit: Callable[[dict], None]) -> Path:
    run = c.copy(c.fx.e13, "run")
    _edit_json(run / "run.json", edit)
    return run


def _mc(key: str, value: object) -> Callable[[dict], None]:
    return lambda d: d["model_config"].__setitem__(key, value)


def _weights(c: Ctx, change: Callable) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    run = c.copy(c.fx.e13, "run")
    f = run / "model.safetensors"
    state = load_file(str(f))
    state = change(state, torch)
    f.unlink()  # a hard link to the checkpoint's file: replace, not rewrite in place
    save_file(state, str(f))
    return run


def _nan(state: dict, torch) -> dict:
    state["wte.weight"][0, 0] = float("nan")
    return state


def _as_int(state: dict, torch) -> dict:
    return {k: v.to(torch.int32) for k, v in state.items()}


def _swapped_bundle(c: Ctx) -> Path:
    b = c.copy(c.fx.bundle, "bundle")

    def swap(spec: dict) -> None:
        a, z = spec["experts"][0], spec["experts"][1]
        for k in ("slice_label", "start_date", "end_date"):
            a[k], z[k] = z[k], a[k]
        spec["experts"] = [z, a]

    _edit_json(b / "timoe.json", swap)
    return b


def _corpus(c: Ctx, name: str, rows: list[dict]) -> Path:
    return c.file(name, "\n".join(json.dumps(r) for r in rows) + "\n")


def _dated_rows(dates: list[object]) -> list[dict]:
    return [{"text": f"Document {i} about the state of things in its own year.", "date": d}
            for i, d in enumerate(dates)]  # fmt: skip


def _prep(c: Ctx, src: Path, *extra: object) -> list:
    return ["prepare-data", "--source", src, "--out", c.tmp / "out", "--seq-len", "8",
            "--workers", "1", "--val-fraction", "0.5", *extra]  # fmt: skip


def _manifest_years(c: Ctx, expect: dict[str, int]) -> str | None:
    m = json.loads((c.tmp / "out" / "manifest.json").read_text())
    got = {y: s["train"]["documents"] + s["val"]["documents"] for y, s in m["years"].items()
           if s["train"]["documents"] + s["val"]["documents"]}  # fmt: skip
    return None if got == expect else f"documents per year {got}, expected {expect}"


def _tsqa(c: Ctx, year: object, question: str = "In that year the office was held by") -> Path:
    item = {"question": question, "choices": [" Ann", " Bob", " Cid", " Dee"], "answer": 0,
            "labels": ["correct", "past", "future", "irrelevant"], "year": year}
    return c.file("qa.json", json.dumps([item]))


def _demo_with_user_file(c: Ctx) -> list:
    out = c.tmp / "demo"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"settings": {"other": 1}, "finished": {}}))
    (out / "my-notes.txt").write_text("mine")
    return ["demo", "--out", out, "--overwrite", "--quick"]


def _data_with_run(c: Ctx) -> list:
    d = c.copy(c.fx.data, "data")
    shutil.copytree(c.fx.e13, d / "my-run")
    return ["prepare-data", "--source", "builtin", "--out", d, "--overwrite",
            "--builtin-docs-per-year", "5", "--seq-len", "32", "--workers", "1"]  # fmt: skip


def _sigint_after(delay: float) -> Callable[[Ctx, list], subprocess.CompletedProcess]:
    def run(c: Ctx, argv: list) -> subprocess.CompletedProcess:
        p = subprocess.Popen([PY, "-m", "timoe_cli", *map(str, argv)], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    return run


def _two_writers(c: Ctx, argv: list) -> subprocess.CompletedProcess:
    """Two train-expert runs on one --out, started 0.3 s apart: exactly one trains, the
    other is exit 2 naming the holder; reported as the second's result if the first
    succeeded."""
    cmd = [PY, "-m", "timoe_cli", *map(str, argv)]
    kw = {"cwd": REPO, "env": ENV, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    first = subprocess.Popen(cmd, **kw)
    time.sleep(0.3)
    second = subprocess.Popen(cmd, **kw)
    o1, e1 = first.communicate(timeout=300)
    o2, e2 = second.communicate(timeout=300)
    codes = sorted([first.returncode, second.returncode])
    if codes != [0, 2]:
        return subprocess.CompletedProcess(argv, 99, o1 + o2, f"exit codes {codes}: {e1} | {e2}")
    err = e2 if second.returncode == 2 else e1
    return subprocess.CompletedProcess(argv, 2, "", err)


def _stale_lock(c: Ctx) -> list:
    out = c.tmp / "out"
    dead = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    import socket

    (c.tmp / ".out.lock").write_text(f"{socket.gethostname()} {dead} 2020-01-01T00:00:00Z\n")
    return _train(c, out=out)


def _trained(c: Ctx, proc: subprocess.CompletedProcess) -> str | None:
    if not (c.tmp / "out" / "model.safetensors").is_file():
        return "no model.safetensors"
    if (c.tmp / ".out.lock").exists():
        return "the lock file was left behind"
    return None


def _tmpfs(c: Ctx, size: str) -> Path:
    d = c.tmp / "small-disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                       capture_output=True)  # fmt: skip
    if r.returncode != 0:
        raise Skip("cannot mount a tmpfs here (needs root)")
    c.holders.append(_Unmount(d))  # type: ignore[arg-type]
    return d


class _Unmount:
    def __init__(self, d: Path) -> None:
        self.d = d

    def kill(self) -> None:
        subprocess.run(["umount", str(self.d)], capture_output=True)

    def wait(self, timeout: float | None = None) -> None:
        pass


class Skip(Exception):
    pass


def _nothing_left_on(disk_name: str) -> Callable[[Ctx, subprocess.CompletedProcess], str | None]:
    def check(c: Ctx, proc: subprocess.CompletedProcess) -> str | None:
        left = [p.name for p in (c.tmp / disk_name).iterdir() if p.name != "filler"]
        return f"left on the full disk: {left}" if left else None

    return check


def _full_disk_checkpoint(c: Ctx, argv: list) -> subprocess.CompletedProcess:
    disk = _tmpfs(c, "60m")  # one checkpoint of the tiny model fits, not two
    out = disk / "run"
    return cli(*_steps(_train(c, "--checkpoint-every", "2", "--keep-checkpoints", "9",
                              out=out), 40))


def _full_disk_ckpt_check(c: Ctx, proc: subprocess.CompletedProcess) -> str | None:
    ckpts = sorted(p.name for p in (c.tmp / "small-disk" / "run" / "checkpoints").iterdir())
    if any(not n.startswith("step-") for n in ckpts):
        return f"a temp checkpoint was left: {ckpts}"
    return None


# ------------------------------------------------------------ round three helpers


def _odd(c: Ctx, kind: str, name: str = "out") -> Path:
    """A path of the given oddity in the sandbox: what a careless or hostile --out is."""
    p = c.tmp / name
    if kind == "dangling":
        p.symlink_to(c.tmp / "nowhere")
    elif kind == "loop":
        p.symlink_to(c.tmp / f"{name}-loop")
        (c.tmp / f"{name}-loop").symlink_to(p)
    elif kind == "to-user-file":
        c.file("mine.txt", "mine")
        p.symlink_to(c.tmp / "mine.txt")
    elif kind == "to-empty-dir":
        (c.tmp / "real").mkdir()
        p.symlink_to(c.tmp / "real")
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "under-dangling":
        (c.tmp / "parent").symlink_to(c.tmp / "gone")
        p = c.tmp / "parent" / name
    elif kind == "under-file":
        c.file("parent", "mine")
        p = c.tmp / "parent" / name
    return p


def _odd_lock(c: Ctx, target: Path, kind: str) -> Path:
    """`target`'s lock path made into something that is not a lock file timoe made."""
    from timoe_core.lock import lock_path

    lock = lock_path(target)
    mine = c.file("precious.txt", "my thesis\n")
    if kind == "symlink":
        lock.symlink_to(mine)
    elif kind == "dangling":
        lock.symlink_to(c.tmp / "nowhere")
    elif kind == "dir":
        lock.mkdir()
    elif kind == "hardlink":
        os.link(mine, lock)
    elif kind == "fifo":
        os.mkfifo(lock)
    elif kind == "user-text":
        lock.write_text("these are my notes, not a lock\n")
    return target


def _in_real(c: Ctx, proc: subprocess.CompletedProcess) -> str | None:
    real = c.tmp / "real"
    if not (c.tmp / "out").is_symlink():
        return "the link was replaced"
    return None if any(real.iterdir()) else "nothing written into the linked folder"


def _staged_copy(c: Ctx, where: str = "run") -> Path:
    return Path(shutil.copytree(c.fx.staged, c.tmp / where))


def _rerun_staged(c: Ctx, run: Path, *extra: object) -> list:
    return _staged_argv(c.fx.data, run, *extra)


def _snap(run: Path) -> Path:
    return run / "snapshots" / "2013-12-31"


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.unlink()  # a hard link to the checkpoint's file: replace, not edit in place
    path.write_bytes(bytes(data))


def _damaged_staged(c: Ctx, damage: Callable[[Path], None], where: str = "run") -> Path:
    run = _staged_copy(c, where)
    damage(run)
    return run


def _debris(c: Ctx) -> list:
    run = _staged_copy(c)
    for p in (run / ".model.safetensors.a1b2c3d4.tmp", run / ".run.json.zz_9yy8x.tmp",
              _snap(run) / ".snapshot.json.abcdefgh.tmp"):
        p.write_bytes(b"half")
    return _rerun_staged(c, run)


def _no_debris(c: Ctx, proc: subprocess.CompletedProcess) -> str | None:
    left = [p.name for p in (c.tmp / "run").rglob(".*.tmp")]
    return f"debris left: {left}" if left else None


def _shard(c: Ctx, name: str, *extra: object) -> Path:
    out = c.tmp / name
    must(cli("prepare-data", "--source", "builtin", "--builtin-docs-per-year", "4",
             "--seq-len", "16", "--workers", "1", "--end-year", "2016", "--num-shards", "2",
             "--out", out, *extra), f"shard {name}")  # fmt: skip
    return out


def _merge(c: Ctx, second: tuple, out: Callable[[Ctx, Path, Path], Path] | None = None,
           *extra: object) -> list:
    a = _shard(c, "s0", "--shard-index", "0")
    b = _shard(c, "s1", "--shard-index", "1", *second)
    target = out(c, a, b) if out else c.tmp / "m"
    return ["prepare-data", "--merge", a, b, "--out", target, *extra]


def _pickled_source(c: Ctx, content: str) -> Path:
    import argparse

    import torch

    src = c.tmp / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({
        "n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 50304, "sequence_length": 32,
        "bias": False, "dropout": 0.0, "mlp_dim_exp_factor": 1.0}))
    pt = src / "pytorch_model.bin"
    if content == "namespace":
        torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(a=1)}, pt)
    elif content == "code":
        torch.save({"model": {"w": torch.zeros(2)}, "f": os.system}, pt)
    else:
        pt.write_bytes(b"\x80\x04garbage")
    return src


def _import(c: Ctx, src: Path, out: Path | None = None) -> list:
    return ["import", "--format", "gptbase", "--source", src, "--slice", "2015-2016",
            "--out", out or c.tmp / "out"]  # fmt: skip


def _huge_import_config(c: Ctx, text: str) -> Path:
    src = c.tmp / "src"
    src.mkdir()
    (src / "config.json").write_text(text)
    return src


def _no_torch_advice(c: Ctx, proc: subprocess.CompletedProcess) -> str | None:
    bad = [w for w in ("Re-running", "will likely succeed", "huggingface-cli")
           if w in proc.stderr]
    return f"stderr gives {bad}" if bad else None


def _lm_eval(c: Ctx, argv: list) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "timoe_cli.lm_eval", *map(str, argv)], cwd=c.tmp,
                          env={**ENV, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _avg_bundle(c: Ctx) -> Path:
    b = c.tmp / "bundle"
    must(cli("train-router", "--strategy", "avg", "--experts", c.fx.experts, "--out", b), "b")
    return b


def _mine_kept(c: Ctx, proc: subprocess.CompletedProcess) -> str | None:
    mine = c.tmp / "precious.txt"
    return None if mine.read_text() == "my thesis\n" else "the user's file was written"


def round_three() -> list[Case]:
    """Odd outputs, lock files, resumes over a changed past, metadata shapes, merges,
    numbers, ignored flags, foreign spellings, advice (docs/bad-inputs.md)."""
    big = "9" * 5000
    return [
        # --- lock files that are not plain files
        Case("lock3-symlink-to-user-file-train-expert", lambda c: _train(
            c, out=_odd_lock(c, c.tmp / "out", "symlink")), words=["symbolic link",
                                                                    "not a lock file"]),
        Case("lock3-dir-prepare-data", lambda c: ["prepare-data", "--builtin-docs-per-year",
             "3", "--out", _odd_lock(c, c.tmp / "data", "dir")], words=["a folder"]),
        Case("lock3-fifo-evaluate-json", lambda c: _eval(c, None, "--json", _odd_lock(
            c, c.tmp / "r.json", "fifo")), words=["--json", "not a lock file"]),
        Case("lock3-hardlink-router-avg", lambda c: ["train-router", "--strategy", "avg",
             "--experts", c.fx.experts, "--out", _odd_lock(c, c.tmp / "b", "hardlink")],
             words=["hard links"], check=_mine_kept),
        Case("lock3-dangling-export", lambda c: ["export", "--model", c.fx.e13, "--out",
             _odd_lock(c, c.tmp / "x", "dangling")], words=["symbolic link"]),
        Case("lock3-user-text-coadapt", lambda c: ["coadapt", "--experts", c.fx.experts,
             "--data", c.fx.data, "--out", _odd_lock(c, c.tmp / "co", "user-text"),
             *TINY[6:]], words=["holds no timoe lock line"]),
        Case("lock3-symlink-demo", lambda c: ["demo", "--quick", "--out", _odd_lock(
            c, c.tmp / "demo", "symlink")], words=["symbolic link"], check=_mine_kept),
        # --- odd output paths, every command
        Case("out3-prepare-dangling", lambda c: ["prepare-data", "--builtin-docs-per-year",
             "3", "--out", _odd(c, "dangling")], words=["does not exist or loops"]),
        Case("out3-prepare-link-to-empty-dir", lambda c: ["prepare-data",
             "--builtin-docs-per-year", "3", "--seq-len", "16", "--workers", "1", "--out",
             _odd(c, "to-empty-dir")], code=0, unchanged=False, check=_in_real),
        Case("out3-train-expert-loop", lambda c: _train(c, out=_odd(c, "loop")),
             words=["does not exist or loops"]),
        Case("out3-train-expert-to-user-file", lambda c: _train(c, out=_odd(c, "to-user-file")),
             words=["not a folder"]),
        Case("out3-train-expert-under-dangling", lambda c: _train(c, out=_odd(
            c, "under-dangling")), words=["does not exist or loops"]),
        Case("out3-router-avg-fifo", lambda c: ["train-router", "--strategy", "avg",
             "--experts", c.fx.experts, "--out", _odd(c, "fifo")], words=["is a file"]),
        Case("out3-coadapt-dangling", lambda c: ["coadapt", "--experts", c.fx.experts,
             "--data", c.fx.data, "--out", _odd(c, "dangling"), *TINY[6:]],
             words=["does not exist or loops"]),
        Case("out3-export-dangling", lambda c: ["export", "--model", c.fx.e13, "--out",
             _odd(c, "dangling")], words=["does not exist or loops"]),
        Case("out3-export-link-to-empty-dir", lambda c: ["export", "--model", c.fx.e13,
             "--out", _odd(c, "to-empty-dir")], code=0, unchanged=False, check=_in_real),
        Case("out3-import-under-file", lambda c: _import(c, _pickled_source(c, "garbage"),
             _odd(c, "under-file")), words=["is a file, not a folder"]),
        Case("out3-evaluate-json-to-user-file", lambda c: _eval(c, None, "--json", _odd(
            c, "to-user-file", "r.json")), words=["symbolic link", "never writes through"]),
        Case("out3-evaluate-plot-dangling", lambda c: _eval(c, None, "--plot", _odd(
            c, "dangling", "p.png")), words=["does not exist or loops"]),
        Case("out3-compare-json-loop", lambda c: ["compare", "--model", c.fx.e13, "--model",
             c.fx.e15, "--tsqa", "builtin", "--json", _odd(c, "loop", "r.json")],
             words=["does not exist or loops"]),
        Case("out3-demo-dangling", lambda c: ["demo", "--quick", "--out", _odd(c, "dangling")],
             words=["does not exist or loops"]),
        # --- resume over a changed or broken past
        Case("resume3-steps-per-stage", lambda c: _rerun_staged(c, _staged_copy(c),
             "--steps-per-stage", "3"), words=["cannot resume", "--steps-per-stage (run has 2"]),
        Case("resume3-lr", lambda c: _rerun_staged(c, _staged_copy(c), "--lr", "0.01"),
             words=["--lr (run has"]),
        Case("resume3-decay-shape", lambda c: _rerun_staged(c, _staged_copy(c),
             "--decay-shape", "cosine"), words=["--decay-shape"]),
        Case("resume3-grad-accum", lambda c: _rerun_staged(c, _staged_copy(c),
             "--grad-accum", "2"), words=["--grad-accum"]),
        Case("resume3-snapshot-weights-changed", lambda c: _rerun_staged(c, _damaged_staged(
            c, lambda r: _flip_last_byte(_snap(r) / "model.safetensors"))),
            words=["fails its sha256 check"]),
        Case("resume3-snapshot-deleted", lambda c: _rerun_staged(c, _damaged_staged(
            c, lambda r: shutil.rmtree(_snap(r)))), words=["is missing or unfinished"]),
        Case("resume3-snapshot-json-other-stage", lambda c: _rerun_staged(c, _damaged_staged(
            c, lambda r: _edit_json(_snap(r) / "snapshot.json",
                                    lambda d: d.update(stage_steps=7)))),
            words=["records another stage", "stage_steps 7"]),
        Case("resume3-debris-removed", _debris, code=0, unchanged=False, check=_no_debris),
        Case("resume3-config-yaml-list", lambda c: _rerun_staged(c, _damaged_staged(
            c, lambda r: (r / "config.yaml").write_text("- a\n- b\n"))),
            words=["config.yaml is corrupt"]),
        # --- metadata of the wrong shape
        Case("meta3-snapshot-json-list", lambda c: _eval(c, _damaged_staged(
            c, lambda r: (_snap(r) / "snapshot.json").write_text("[1, 2]"), "m/run").parent,
            "--query-date", "2014-01-01", "--policy", "point-in-time"),
            words=["snapshot.json is corrupt"]),
        Case("meta3-snapshot-sha-number-and-bad-weights", lambda c: _eval(c, _damaged_staged(
            c, lambda r: (_edit_json(_snap(r) / "snapshot.json", lambda d: d.update(sha256=1)),
                          _flip_last_byte(_snap(r) / "model.safetensors")), "m/run").parent,
            "--query-date", "2014-01-01", "--policy", "point-in-time"),
            words=["snapshot.json is corrupt", "sha256"]),
        Case("meta3-run-json-snapshot-path-dotdot", lambda c: _eval(c, _damaged_staged(
            c, lambda r: _edit_json(r / "run.json", lambda d: d.update(snapshots=[
                {"data_cutoff": "2013-12-31", "path": "../../x"}])))),
            words=["run.json is corrupt (snapshots"]),
        Case("meta3-run-json-snapshots-a-string", lambda c: _gen(c, _damaged_staged(
            c, lambda r: _edit_json(r / "run.json", lambda d: d.update(snapshots="all")))),
            words=["run.json is corrupt"]),
        Case("meta3-demo-json-list", lambda c: ["demo", "--quick", "--out", (
            c.file("d/demo.json", "[1, 2, 3]").parent)], words=["holds no demo"]),
        Case("meta3-manifest-reading-wrong-type", lambda c: _train(c, "--data", _edit_manifest(
            c, lambda m: m.update(reading=[1]))), words=["manifest.json is corrupt",
                                                         "reading"]),
        # --- merges that must not happen
        Case("merge3-until-differs", lambda c: _merge(c, ("--until", "2015")),
             words=["their --until differ"]),
        Case("merge3-seed-differs", lambda c: _merge(c, ("--seed", "4")),
             words=["their --seed differ"]),
        Case("merge3-max-docs-differs", lambda c: _merge(c, ("--max-docs", "7")),
             words=["their --max-docs differ"]),
        Case("merge3-out-is-first-input-overwrite", lambda c: _merge(
            c, (), lambda c, a, b: a, "--overwrite"), words=["would overwrite the --merge input"]),
        Case("merge3-out-is-second-input-overwrite", lambda c: _merge(
            c, (), lambda c, a, b: b, "--overwrite"), words=["would overwrite the --merge input"]),
        Case("merge3-out-link-to-input", lambda c: _merge(
            c, (), lambda c, a, b: (c.tmp / "ln").symlink_to(b) or c.tmp / "ln", "--overwrite"),
            words=["would overwrite the --merge input"]),
        # --- numbers the parser cannot hold
        Case("big3-config-yaml-5000-digits", lambda c: _train(c, "--config", c.file(
            "c.yaml", f"seed: {big}\n")), words=["is not valid"]),
        Case("big3-config-toml-5000-digits", lambda c: _train(c, "--config", c.file(
            "c.toml", f"max_steps = {big}\n")), words=["is not valid"]),
        Case("big3-config-json-5000-digits", lambda c: ["prepare-data", "--config", c.file(
            "c.json", f'{{"seq_len": {big}}}'), "--out", c.tmp / "o"], words=["is not valid"]),
        Case("big3-run-json-5000-digits", lambda c: _gen(c, _big_run_json(c, big)),
             words=["run.json is corrupt"]),
        Case("big3-import-config-n-layer", lambda c: _import(c, _huge_import_config(
            c, json.dumps({"n_layer": 10**9, "n_head": 2, "n_embd": 32, "vocab_size": 50304,
                           "sequence_length": 32, "bias": False, "dropout": 0.0,
                           "mlp_dim_exp_factor": 1.0}))), words=["config.json", "n_layer"]),
        Case("big3-import-config-5000-digits", lambda c: _import(c, _huge_import_config(
            c, '{"n_layer": ' + big + "}")), words=["config.json"]),
        # --- flags that would be ignored
        Case("flag3-dense-series-folder-of-experts", lambda c: _eval(
            c, c.fx.experts, "--strategy", "dense-series"), words=["dense-series"]),
        Case("flag3-dense-series-bundle", lambda c: _eval(
            c, _avg_bundle(c), "--strategy", "dense-series", "--query-date", "2016"),
            words=["dense-series"]),
        Case("flag3-lm-eval-bogus-key", lambda c: ["--model", "timoe", "--model_args",
             f"model={c.fx.e13},bogus_key=1", "--tasks", "arc_easy"], run=_lm_eval,
             words=["bogus_key", "is not an option of the timoe model"]),
        Case("flag3-lm-eval-typo-key", lambda c: ["--model=timoe",
             f"--model_args=model={c.fx.e13},querydate=2016", "--tasks", "arc_easy"],
             run=_lm_eval, words=["querydate"]),
        Case("flag3-generate-greedy-top-k", lambda c: _gen(c, None, "--greedy", "--top-k", 3),
             words=["--top-k has no effect"]),
        Case("flag3-evaluate-max-items-without-tsqa", lambda c: ["evaluate", "--model",
             c.fx.e13, "--data", c.fx.data, "--max-items", 3, "--device", "cpu"],
             words=["--max-items has no effect"]),
        Case("flag3-evaluate-lm-eval-limit-without-tasks", lambda c: _eval(
            c, None, "--lm-eval-limit", 3), words=["--lm-eval-limit has no effect"]),
        Case("flag3-steps-per-stage-with-snapshots-none", lambda c: _train(
            c, "--steps-per-stage", 3), words=["--steps-per-stage has no effect"]),
        Case("flag3-builtin-docs-with-a-file-source", lambda c: _prep(c, _corpus(
            c, "a.jsonl", _dated_rows([2015])), "--builtin-docs-per-year", 9),
            words=["--builtin-docs-per-year has no effect"]),
        Case("flag3-merge-with-seq-len", lambda c: ["prepare-data", "--merge", c.fx.data,
             "--out", c.tmp / "m", "--seq-len", 64], words=["--seq-len has no effect"]),
        # --- foreign spellings
        Case("spell3-device-cuda-0-no-cuda", lambda c: _eval(c, None, "--device", "cuda:0"),
             words=["--device cuda:0 was asked for but CUDA is not available"]),
        Case("spell3-device-cuda-1-config", lambda c: ["generate", "--model", c.fx.e13,
             "--prompt", "The", "--max-new-tokens", 2, "--config", c.file(
                 "c.yaml", "device: cuda:1\n")], words=["--device cuda:1"]),
        Case("spell3-device-typo", lambda c: _gen(c, None, "--device", "gpu0"),
             words=["auto, cpu, cuda or cuda:N"]),
        # --- messages that give unsafe or wrong advice
        Case("advice3-import-pickle-namespace", lambda c: _import(c, _pickled_source(
            c, "namespace")), words=["will not unpickle", "argparse.Namespace", "safetensors"],
            check=_no_torch_advice),
        Case("advice3-import-pickle-code", lambda c: _import(c, _pickled_source(c, "code")),
             words=["will not unpickle", "posix.system"], check=_no_torch_advice),
        Case("advice3-import-pickle-garbage", lambda c: _import(c, _pickled_source(
            c, "garbage")), words=["will not unpickle"], check=_no_torch_advice),
        Case("advice3-hf-offline-names-hf-download", lambda c: ["evaluate", "--model",
             "hf:someone/absent", "--tsqa", "builtin", "--device", "cpu"],
             env={"HF_HUB_OFFLINE": "1"}, words=["hf download someone/absent"],
             check=_no_torch_advice),
    ]  # fmt: skip


def _big_run_json(c: Ctx, big: str) -> Path:
    run = c.copy(c.fx.e13, "run")
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text.replace('"n_layer": 1', f'"n_layer": {big}', 1))
    return run



def cases() -> list[Case]:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" + \
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    return [
        # --- resource bombs
        Case("bomb-yaml-aliases", lambda c: _train(c, "--config", c.file("c.yaml", bomb)),
             words=["anchors", "not allowed"]),
        Case("bomb-yaml-alias-in-value",
             lambda c: _train(c, "--config", c.file("c.yaml", "lr: &x 0.1\nmin_lr_ratio: *x\n")),
             words=["not allowed"]),
        Case("bomb-config-2MB", lambda c: _train(c, "--config",
                                                 c.file("c.yaml", "# x\n" * 600_000)),
             words=["bytes", "config file"]),
        Case("bomb-config-toml-2MB", lambda c: ["prepare-data", "--config",
             c.file("c.toml", "# x\n" * 600_000), "--out", c.tmp / "out"], words=["bytes"]),
        Case("bomb-run-json-block-size",
             lambda c: _gen(c, _run_json(c, _mc("block_size", 10**12))),
             words=["run.json is corrupt", "model_config.block_size"]),
        Case("bomb-run-json-n-layer", lambda c: _eval(c, _run_json(c, _mc("n_layer", 10**6))),
             words=["model_config.n_layer"]),
        Case("bomb-run-json-vocab", lambda c: _gen(c, _run_json(c, _mc("vocab_size", 10**9))),
             words=["model_config.vocab_size"]),
        Case("bomb-run-json-params",
             lambda c: _gen(c, _run_json(c, lambda d: d["model_config"].update(
                 n_layer=1000, n_embd=8192, n_head=8))), words=["parameters"]),
        Case("bomb-run-json-huge-file",
             lambda c: _gen(c, _run_json(c, lambda d: d.update(pad="x" * (20 << 20)))),
             words=["bytes", "run.json"]),
        Case("bomb-train-n-layer-flag", lambda c: _train(c, "--n-layer", 10**6),
             words=["--n-layer", "1024"]),
        Case("bomb-train-seq-len-flag", lambda c: _train(c, "--seq-len", 10**12),
             words=["--block-size", "131072"]),
        Case("bomb-manifest-seq-len", lambda c: _train(c, "--data", _edit_manifest(
            c, lambda m: m.update(seq_len=10**12))), words=["manifest.json is corrupt",
                                                             "seq_len"]),
        Case("bomb-router-hidden-dim", lambda c: ["train-router", "--experts", c.fx.experts,
             "--data", c.fx.data, "--out", c.tmp / "out", "--router-hidden-dim", 10**9],
             words=["--router-hidden-dim"]),
        Case("bomb-bundle-router-dim", lambda c: _gen(c, _bundle_edit(
            c, lambda s: s.update(router={"slice_labels": ["a"], "vocab_size": 10**9})),
            "--query-date", "2016"), words=["timoe.json is corrupt", "router.vocab_size"]),
        # --- non-finite and out-of-range numbers
        Case("num-lr-inf-flag", lambda c: _train(c, "--lr", "inf"), words=["--lr", "finite"]),
        Case("num-lr-nan-flag", lambda c: _train(c, "--lr", "nan"), words=["--lr"]),
        Case("num-weight-decay-inf-yaml",
             lambda c: _train(c, "--config", c.file("c.yaml", "weight_decay: .inf\n")),
             words=["--weight-decay", "finite"]),
        Case("num-grad-clip-nan-toml",
             lambda c: _train(c, "--config", c.file("c.toml", "grad_clip = nan\n")),
             words=["--grad-clip"]),
        Case("num-seed-negative", lambda c: _train(c, "--seed", "-5"), words=["--seed"]),
        Case("num-seed-2-70", lambda c: _train(c, "--seed", str(2**70)), words=["--seed"]),
        Case("num-seed-float-yaml", lambda c: _train(c, "--config", c.file("c.yaml",
                                                                         "seed: 1.0e30\n")),
             words=["--seed"]),
        Case("num-prepare-seed-negative", lambda c: ["prepare-data", "--seed", "-1", "--out",
                                                     c.tmp / "out"], words=["--seed"]),
        Case("num-val-fraction-nan", lambda c: ["prepare-data", "--val-fraction", "nan",
                                                "--out", c.tmp / "out"],
             words=["--val-fraction"]),
        Case("num-temperature-tiny", lambda c: _gen(c, None, "--temperature", "1e-45"),
             words=["--temperature"]),
        Case("num-temperature-inf", lambda c: _gen(c, None, "--temperature", "inf"),
             words=["--temperature"]),
        Case("num-generate-seed-negative", lambda c: _gen(c, None, "--seed", "-1"),
             words=["--seed"]),
        Case("num-demo-seed-negative", lambda c: ["demo", "--seed", "-3", "--out",
                                                  c.tmp / "d"], words=["--seed"]),
        Case("num-coadapt-lr-inf", lambda c: ["coadapt", "--experts", c.fx.experts, "--data",
             c.fx.data, "--out", c.tmp / "out", "--lr", "inf"], words=["--lr"]),
        Case("num-router-entropy-nan", lambda c: ["train-router", "--experts", c.fx.experts,
             "--data", c.fx.data, "--out", c.tmp / "out", "--config",
             c.file("c.yaml", "entropy_coef: .nan\n")], words=["--entropy-coef"]),
        Case("num-weights-nan", lambda c: _eval(c, _weights(c, _nan)),
             words=["NaN or infinite", "wte.weight"]),
        Case("num-weights-int32", lambda c: _gen(c, _weights(c, _as_int)),
             words=["dtype int32"]),
        # --- text the printer would interpret
        Case("markup-close-tag-in-path", lambda c: _eval(c, c.tmp / "a[/]b"),
             words=["a[/]b does not exist"]),
        Case("markup-bold-in-path", lambda c: _eval(c, c.tmp / "[bold]x"),
             words=["[bold]x does not exist"]),
        Case("markup-emoji-in-source", lambda c: ["prepare-data", "--source",
             c.tmp / "hf:a:smile:c.jsonl", "--out", c.tmp / "out"], words=[":smile:"]),
        Case("markup-config-path", lambda c: _train(c, "--config", c.tmp / "[red]c[/].yaml"),
             words=["[red]c[/].yaml does not exist"]),
        Case("markup-usage-error", lambda c: ["evaluate", "--strategy"],
             words=["--strategy"]),
        # --- dates
        Case("date-compact-iso", lambda c: _prep(c, _corpus(c, "a.jsonl", _dated_rows(
            ["20190401", 20190402, "2019-04-03", "20150101T10:00:00"]))), code=0,
            check=lambda c, p: _manifest_years(c, {"2019": 3, "2015": 1}), unchanged=False),
        Case("date-fractional-year", lambda c: _prep(c, _corpus(c, "a.jsonl", _dated_rows(
            [2016.5, "2016.25", 2017.0]))), code=0,
            check=lambda c, p: _manifest_years(c, {"2016": 2, "2017": 1}), unchanged=False),
        Case("date-small-number-not-unix-seconds", lambda c: _prep(c, _corpus(c, "a.jsonl",
             _dated_rows([2015, 12345]))), words=["a.jsonl:2", "12345"]),
        Case("date-year-zero-in-data", lambda c: _prep(c, _corpus(c, "a.jsonl",
             _dated_rows([2015, "0000"]))), words=["a.jsonl:2", "year out of range"]),
        Case("date-no-such-compact-day", lambda c: _prep(c, _corpus(c, "a.jsonl",
             _dated_rows([20190231]))), words=["a.jsonl:1", "no such day"]),
        Case("date-negative", lambda c: _prep(c, _corpus(c, "a.jsonl", _dated_rows([-5]))),
             words=["a.jsonl:1"]),
        Case("date-query-year-0", lambda c: _eval(c, None, "--query-date", "0000"),
             words=["year 0"]),
        Case("date-query-5-digits", lambda c: _eval(c, None, "--query-date", "20170"),
             words=["bad query date '20170'"]),
        Case("date-query-fractional", lambda c: _gen(c, None, "--query-date", "2016.5"),
             words=["bad query date '2016.5'"]),
        Case("date-query-compact", lambda c: _eval(c, None, "--query-date", "20140601"),
             code=0, unchanged=False),
        Case("date-tsqa-year-0", lambda c: _eval_qa(c, _tsqa(c, 0)), words=["item 0", "'year'"]),
        Case("date-tsqa-year-20170", lambda c: _eval_qa(c, _tsqa(c, 20170)),
             words=["item 0", "'year'"]),
        Case("date-tsqa-year-fraction", lambda c: _eval_qa(c, _tsqa(c, 2016.5)),
             words=["item 0", "'year'"]),
        Case("date-tsqa-question-trailing-space",
             lambda c: _eval_qa(c, _tsqa(c, 2014, "The office was held by ")), code=0,
             unchanged=False),
        # --- destructive conveniences
        Case("destroy-prepare-overwrite-run-inside", _data_with_run,
             words=["my-run", "prepare-data did not write"]),
        Case("destroy-prepare-overwrite-notes", lambda c: _data_with_file(c),
             words=["notes.txt"]),
        Case("destroy-demo-overwrite-user-file", _demo_with_user_file,
             words=["my-notes.txt", "the demo did not write"]),
        Case("destroy-json-equals-plot", lambda c: _eval(c, None, "--json", c.tmp / "x.png",
                                                         "--plot", c.tmp / "x.png"),
             words=["--plot", "also the --json"]),
        Case("destroy-json-into-model", lambda c: _eval(c, c.copy(c.fx.e13, "run"), "--json",
                                                        c.tmp / "run" / "run.json"),
             words=["would overwrite the --model input"]),
        Case("destroy-json-user-file", lambda c: _eval(c, None, "--json",
                                                       c.file("mine.json", "[1, 2]")),
             words=["is not a file this command wrote"]),
        Case("destroy-plot-not-png", lambda c: _eval(c, None, "--plot",
                                                     c.file("p.png", "not a png")),
             words=["is not a file this command wrote"]),
        Case("destroy-compare-json-equals-plot", lambda c: ["compare", "--model", c.fx.e13,
             "--model", c.fx.e15, "--tsqa", "builtin", "--json", c.tmp / "r.png", "--plot",
             c.tmp / "r.png"], words=["also the --json"]),
        # --- metadata cross-check
        Case("meta-bundle-slices-swapped", lambda c: _eval(c, _swapped_bundle(c),
                                                           "--query-date", "2014"),
             words=["disagrees", "slice"]),
        Case("meta-run-json-kind-changed", lambda c: _gen(c, _bundle_with_expert_edit(
            c, lambda d: d.update(kind="dense")), "--query-date", "2016"),
            words=["disagrees", "kind"]),
        # --- messages
        Case("msg-run-json-names-field", lambda c: _gen(c, _run_json(c, _mc("n_layer", "x"))),
             words=["model_config.n_layer"]),
        Case("msg-ragged-csv-line", lambda c: _prep(c, c.file("r.csv", "text,date\n" + "".join(
            f"doc {i},2015\n" for i in range(30)) + "bad,2015,extra\n")), words=["r.csv:32"]),
        Case("msg-ctrl-c-during-imports", lambda c: _eval(c), code=130,
             run=_sigint_after(0.4), words=["interrupted"]),
        Case("msg-ctrl-c-evaluate-no-resume-promise",  # a long evaluation, stopped in it
             lambda c: ["evaluate", "--model", c.fx.experts, "--strategy", "avg", "--tsqa",
                        "builtin", "--data", c.fx.data, "--device", "cpu"], code=130,
             run=_sigint_after(3.0), words=["interrupted"],
             check=lambda c, p: "promises a resume" if "resume" in p.stderr else None),
        # --- found by reading the code
        Case("repro-two-identical-runs-same-sha256", lambda c: [], run=_two_identical_runs,
             code=0, unchanged=False),
        Case("repro-prepare-names-years-without-held-out-window", lambda c: [
            "prepare-data", "--out", c.tmp / "out", "--builtin-docs-per-year", "20",
            "--seq-len", "64", "--workers", "1"], code=0, unchanged=False,
            check=lambda c, p: None if "no held-out window" in p.stdout else "no note"),
        # --- two writers, one output
        Case("lock-two-train-expert-runs", lambda c: _steps(_train(c, out=c.tmp / "out"), 40),
             run=_two_writers, words=["being written by another timoe run", "pid"],
             unchanged=False, check=_trained),
        Case("lock-stale-dead-pid-taken-over", _stale_lock, code=0, unchanged=False,
             check=_trained),
        Case("lock-prepare-data-held", lambda c: _locked(c, "data", ["prepare-data", "--out",
             c.tmp / "data", "--builtin-docs-per-year", "5"]), words=["pid", "--out"]),
        Case("lock-router-avg-held", lambda c: _locked(c, "b", ["train-router", "--strategy",
             "avg", "--experts", c.fx.experts, "--out", c.tmp / "b"]), words=["pid"]),
        Case("lock-coadapt-held", lambda c: _locked(c, "co", ["coadapt", "--experts",
             c.fx.experts, "--data", c.fx.data, "--out", c.tmp / "co", *TINY[6:]]),
             words=["pid"]),
        Case("lock-demo-held", lambda c: _locked(c, "demo", ["demo", "--quick", "--out",
                                                             c.tmp / "demo"]), words=["pid"]),
        Case("lock-evaluate-json-held", lambda c: _locked(c, "r.json", _eval(
            c, None, "--json", c.tmp / "r.json")), words=["--json", "pid"]),
        # --- a full disk, for real (a small tmpfs)
        Case("disk-prepare-data", lambda c: ["prepare-data", "--source", "builtin", "--out",
             _tmpfs(c, "300k") / "data", "--seq-len", "32", "--workers", "1"],
             words=["No space left on device", "small-disk/data"], unchanged=False,
             check=_nothing_left_on("small-disk")),
        Case("disk-train-checkpoint", lambda c: [], run=_full_disk_checkpoint,
             words=["No space left on device", "is intact"], unchanged=False,
             check=_full_disk_ckpt_check),
        Case("disk-evaluate-json", lambda c: _eval(c, None, "--json",
                                                   _full_tmpfs(c) / "r.json"),
             words=["No space left on device"], unchanged=False,
             check=_nothing_left_on("small-disk")),
    ]  # fmt: skip


def _full_tmpfs(c: Ctx) -> Path:
    d = _tmpfs(c, "64k")
    filler = d / "filler"
    try:
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass
    # the check wants the disk to hold nothing of ours: the filler goes before the check
    c.holders.append(_Remove(filler))  # type: ignore[arg-type]
    return d


class _Remove:
    def __init__(self, p: Path) -> None:
        self.p = p

    def kill(self) -> None:
        self.p.unlink(missing_ok=True)

    def wait(self, timeout: float | None = None) -> None:
        pass


def _eval_qa(c: Ctx, qa: Path) -> list:
    return ["evaluate", "--model", c.fx.e13, "--tsqa", qa, "--device", "cpu"]


def _edit_manifest(c: Ctx, edit: Callable[[dict], None]) -> Path:
    d = c.copy(c.fx.data, "data")
    _edit_json(d / "manifest.json", edit)
    return d


def _bundle_edit(c: Ctx, edit: Callable[[dict], None]) -> Path:
    b = c.copy(c.fx.bundle, "bundle")
    _edit_json(b / "timoe.json", edit)
    return b


def _bundle_with_expert_edit(c: Ctx, edit: Callable[[dict], None]) -> Path:
    """A bundle over copies of the experts, then one expert's run.json edited."""
    experts = c.copy(c.fx.experts, "experts")
    b = c.tmp / "bundle"
    must(cli("train-router", "--strategy", "avg", "--experts", experts, "--out", b), "bundle")
    _edit_json(experts / "2015-2016" / "run.json", edit)
    return b


def _data_with_file(c: Ctx) -> list:
    d = c.copy(c.fx.data, "data")
    (d / "notes.txt").write_text("mine")
    return ["prepare-data", "--source", "builtin", "--out", d, "--overwrite",
            "--builtin-docs-per-year", "5", "--seq-len", "32", "--workers", "1"]  # fmt: skip


def _two_identical_runs(c: Ctx, argv: list) -> subprocess.CompletedProcess:
    """The same train-expert twice: the weight files (whose sha256 bundles record) must
    be byte-identical."""
    import hashlib

    digests = []
    for name in ("a", "b"):
        proc = cli(*_train(c, out=c.tmp / name))
        if proc.returncode != 0:
            return proc
        digests.append(hashlib.sha256((c.tmp / name / "model.safetensors").read_bytes())
                       .hexdigest())  # fmt: skip
    ok = digests[0] == digests[1]
    return subprocess.CompletedProcess(argv, 0 if ok else 99, "",
                                       "" if ok else f"sha256 differ: {digests}")


def _steps(argv: list, n: int) -> list:
    argv[argv.index("--max-steps") + 1] = str(n)
    return argv


def _locked(c: Ctx, name: str, argv: list) -> list:
    c.hold_lock(c.tmp / name)
    return argv


# ------------------------------------------------------------------ running


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if "small-disk" in p.parts:
            continue  # a mount point: judged by the case's own check
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        # a folder's mtime changes when a probe file is made and removed in it (the
        # writability checks do): only files count as written
        is_file = p.is_file()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns) if is_file else (0, 0)
    return out


def run_case(case: Case, fx: Fixtures, work: Path) -> tuple[str, str]:
    """('hold' | 'BREAK' | 'skip', why)."""
    tmp = work / case.id
    tmp.mkdir()
    c = Ctx(fx, tmp)
    try:
        try:
            argv = case.argv(c)
        except Skip as exc:
            return "skip", str(exc)
        before = snapshot(tmp)
        fixtures_before = snapshot(fx.root / "experts")
        try:
            proc = case.run(c, argv) if case.run else cli(*argv, env=case.env)
        except Skip as exc:
            return "skip", str(exc)
        problems = []
        if proc.returncode != case.code:
            problems.append(f"exit {proc.returncode}, expected {case.code}")
        if "Traceback" in proc.stderr or "Traceback" in proc.stdout:
            problems.append("a traceback")
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        if case.code != 0 and len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines")
        for w in case.words:
            if w not in proc.stderr:
                problems.append(f"stderr lacks {w!r}")
        if case.unchanged and snapshot(tmp) != before:
            new = sorted(set(snapshot(tmp)) ^ set(before))
            problems.append(f"wrote or changed files: {new[:4] or 'contents changed'}")
        if snapshot(fx.root / "experts") != fixtures_before:
            problems.append("changed the shared expert run dirs")
        if case.check is not None and not problems:
            if (why := case.check(c, proc)) is not None:
                problems.append(why)
        if problems:
            tail = (lines[-1] if lines else "")[:300]
            return "BREAK", "; ".join(problems) + (f" | stderr: {tail}" if tail else "")
        return "hold", (lines[0] if lines else "")[:160]
    finally:
        for h in reversed(c.holders):
            h.kill()
            h.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", default="", help="only the cases whose id holds this text")
    ap.add_argument("-v", action="store_true", help="print every case, not only breaks")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    selected = [c for c in cases() + round_three() if args.k in c.id]
    with tempfile.TemporaryDirectory(prefix="timoe-hostile-") as d:
        root = Path(d)
        t0 = time.time()
        fx = build_fixtures(root / "fixtures")
        print(f"fixtures in {time.time() - t0:.0f} s; {len(selected)} cases", flush=True)
        work = root / "cases"
        work.mkdir()
        results = []
        for case in selected:
            t = time.time()
            status, why = run_case(case, fx, work)
            results.append({"id": case.id, "status": status, "detail": why,
                            "seconds": round(time.time() - t, 1)})  # fmt: skip
            if args.v or status != "hold":
                print(f"{status:5} {case.id}: {why}", flush=True)
    held = sum(r["status"] == "hold" for r in results)
    ran = sum(r["status"] != "skip" for r in results)
    skipped = len(results) - ran
    print(f"{held} of {ran} hold" + (f" ({skipped} skipped)" if skipped else "")
          + f", in {time.time() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if held == ran else 1


if __name__ == "__main__":
    sys.exit(main())
