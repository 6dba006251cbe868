"""Run the benchmark suite: `python -m benchmarks [--quick] [--json FILE] [--only GROUP]`.

Groups run in one process, one after the other, each measuring its figures side by side
with their peers (see common.py). `--json FILE` writes every figure as
`{name: {"value", "unit", "ratio_to", "target", "goal"}}` plus one `_run` record: the
machine, the command, the date, the load average before and after, and per group its
status, seconds and figure names. `python -m benchmarks.report FILE` turns that file
into docs/benchmarks.md. A group that fails is reported and the others still run; the
exit code is then 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import Figures, Skipped, target_met, write_json

ROOT = Path(__file__).resolve().parents[1]


def _prepare_data(quick: bool) -> Figures:
    from benchmarks import prepare_data

    return prepare_data.run(quick)


def _train(quick: bool) -> Figures:
    from benchmarks import train_throughput

    return train_throughput.run(quick)


def _mixture(quick: bool) -> Figures:
    from benchmarks import mixture

    return mixture.run(quick)


def _router(quick: bool) -> Figures:
    from benchmarks import mixture

    return mixture.run_router_training(quick)


def _staged(quick: bool) -> Figures:
    from benchmarks import staged

    return staged.run(quick)


def _cutoffs(quick: bool) -> Figures:
    from benchmarks import cutoffs

    return cutoffs.run(quick)


def _snapshots(quick: bool) -> Figures:
    from benchmarks import snapshots

    return snapshots.run(quick)


def _generate(quick: bool) -> Figures:
    from benchmarks import generate

    return generate.run(quick)


def _evaluate(quick: bool) -> Figures:
    from benchmarks import evaluate

    return evaluate.run(quick)


def _gpu(quick: bool) -> Figures:
    from benchmarks import gpu

    return gpu.run(quick)


# name -> (what it measures, runner). The order is the order of the docs.
GROUPS: dict[str, tuple[str, Callable[[bool], Figures]]] = {
    "prepare_data": ("prepare-data vs raw tiktoken, and vs workers", _prepare_data),
    "train": ("train step vs bare PyTorch loop, and vs fp32 matmul peak", _train),
    "mixture": ("mixture vs its experts alone and vs naive dense; memory; scaling", _mixture),
    "router": ("learned-avg router training vs eligible experts' forward; log-prob cache",
               _router),
    "staged": (("staged expert and router training vs unstaged, same tokens; log-prob "
                "cache once across stages"), _staged),
    "cutoffs": (("mean staleness of answers, yearly vs quarterly vs monthly cutoffs; a "
                 "router stage's fixed cost"), _cutoffs),
    "snapshots": (("snapshot kinds: compute with 24 stages vs unstaged, quality of averaged "
                   "vs decay-branch vs raw weights, bytes per artefact kind"), _snapshots),
    "generate": ("decode vs the memory-bandwidth roofline, 1, 2 and 6 eligible experts",
                 _generate),
    "evaluate": ("evaluate perplexity vs the bare mixture forward", _evaluate),
    "gpu": (("gpt2-124m on CUDA: training MFU (bf16, compile/eager), mixture, evaluate, "
             "decode roofline"), _gpu),
}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def parse_groups(only: list[str] | None) -> list[str]:
    if not only:
        return list(GROUPS)
    names = [n.strip() for part in only for n in part.split(",") if n.strip()]
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        raise SystemExit(f"unknown benchmark group {unknown[0]!r}: use one of "
                         f"{', '.join(GROUPS)}")
    return [n for n in GROUPS if n in names]  # the suite's order, each once


def run_groups(
    names: list[str],
    quick: bool,
    after_group: Callable[[Figures, dict[str, dict[str, Any]]], None] | None = None,
) -> tuple[Figures, dict[str, dict[str, Any]]]:
    """Every group's figures, and per group its status, seconds, reason and figure names.
    `after_group(figures, record)` is called after each group with all there is so far."""
    figures: Figures = {}
    record: dict[str, dict[str, Any]] = {}
    for name in names:
        what, fn = GROUPS[name]
        print(f"\n=== {name}: {what}", flush=True)
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        entry: dict[str, Any] = {"status": "ran", "reason": None, "figures": []}
        try:
            got = fn(quick)
        except Skipped as exc:
            entry.update(status="skipped", reason=str(exc))
            print(f"{name}: skipped ({exc})")
        except Exception as exc:  # noqa: BLE001  (a broken group must not lose the others' figures)
            traceback.print_exc()
            entry.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        else:
            clash = sorted(set(got) & set(figures))
            if clash:
                raise RuntimeError(f"group {name} repeats figure names: {clash}")
            figures.update(got)
            entry["figures"] = list(got)
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        # CPU time beside wall time: on a loaded machine the wall time says little about
        # what the group costs on a quiet one.
        entry["cpu_seconds"] = round(_cpu_seconds() - cpu0, 1)
        record[name] = entry
        print(f"--- {name}: {entry['status']} in {entry['seconds']:.0f} s "
              f"({entry['cpu_seconds']:.0f} s of CPU)", flush=True)
        if after_group is not None:
            after_group(figures, record)
    return figures, record


def print_summary(figures: Figures) -> None:
    rows = [(k, f) for k, f in figures.items() if f.get("target") is not None]
    if not rows:
        return
    width = max(len(k) for k, _ in rows)
    print("\nfigures with a target:")
    for k, f in rows:
        ok = target_met(f)
        print(f"  {k:{width}s} {f['value']!s:>10} {f['unit']:<10} {f['goal']} {f['target']!s:<6} "
              f"{'met' if ok else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smaller sizes and fewer rounds (<= 3 minutes on a 2-core CPU)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--only", action="append", default=None, metavar="GROUP",
                    help=f"run only these groups (repeat or comma-separate): {', '.join(GROUPS)}")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's, one per core)")
    ap.add_argument("--list", action="store_true", help="list the groups and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, (what, _) in GROUPS.items():
            print(f"{name:14s} {what}")
        return 0
    names = parse_groups(args.only)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    run_record: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "benchmarks", *argv]),
        "quick": args.quick,
        "date": started.isoformat(timespec="seconds"),
        "git": git_revision(),
        "machine": machine(),
        "loadavg_before": [round(x, 2) for x in load_before],
    }

    def record(figures: Figures, groups: dict[str, dict[str, Any]]) -> None:
        # Written after every group, so a long run stopped half-way keeps its figures.
        run_record.update(seconds=round(time.perf_counter() - t0, 1), groups=groups,
                          loadavg_after=[round(x, 2) for x in os.getloadavg()])
        if args.json:
            write_json(args.json, {**figures, "_run": run_record})

    figures, groups = run_groups(names, args.quick, record)
    record(figures, groups)
    print_summary(figures)
    print(f"\n{len(figures)} figures in {run_record['seconds']:.0f} s; load average "
          f"{load_before[0]:.2f} before, {run_record['loadavg_after'][0]:.2f} after")
    if args.json:
        print(f"wrote {args.json}")
    return 1 if any(g["status"] == "failed" for g in groups.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
