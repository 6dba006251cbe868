"""The long kill sweep: SIGKILL every training command at many seeded random points.

For each command (tests/kill_harness.py COMMANDS: train-expert, train-router
--strategy learned-avg and coadapt, each in one process and with 2 gloo workers), one
uninterrupted reference run, then for each of N seeded kill points: run the command,
SIGKILL it there (the whole process group at a logged step, or from inside a checkpoint
write, before or after its rename), rerun the same command, and check that it resumed
from the last complete checkpoint and ended with the reference's weights (bitwise in
one process, allclose with 2 workers). tests/test_reliability.py runs one point per
command; this runs many. On a 2-core CPU machine: about 3 minutes per command at 5
points.

    python scripts/kill_sweep.py                      # every command, 5 points each
    python scripts/kill_sweep.py --points 10 --seed 3 train-expert coadapt
    python scripts/kill_sweep.py --json sweep.json    # also write the results

Exit code 0 when every point passed, 1 otherwise (the failures are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken_cache"))

from kill_harness import (
    COMMANDS,
    kill_and_resume,
    random_kill_point,
    reference_run,
)


def sweep(names: list[str], points: int, seed: int, root: Path) -> list[dict]:
    results = []
    for name in names:
        cmd = COMMANDS[name]
        work = root / name
        t0 = time.perf_counter()
        inputs = cmd.setup(work / "inputs")
        ref = reference_run(cmd, inputs, work / "reference")
        print(f"{name}: reference run in {time.perf_counter() - t0:.1f}s", flush=True)
        rng = random.Random(f"{seed}:{name}")
        for i in range(points):
            point = random_kill_point(cmd, rng)
            row = {"command": name, "point": str(point)}
            try:
                r = kill_and_resume(cmd, inputs, work / f"kill-{i}", point, ref)
                row |= {
                    "ok": True,
                    "resumed_from": r.resumed_from,
                    "max_abs_diff": r.max_abs_diff,
                    "seconds": round(r.seconds, 1),
                }
            except Exception as exc:  # noqa: BLE001 - report every failure, go on
                row |= {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
                traceback.print_exc()
            results.append(row)
            print(json.dumps(row), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "commands", nargs="*", metavar="COMMAND", help=f"of: {', '.join(COMMANDS)} (default: all)"
    )
    parser.add_argument("--points", type=int, default=5, help="kill points per command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    unknown = [c for c in args.commands if c not in COMMANDS]
    if unknown:
        parser.error(f"unknown command(s) {', '.join(unknown)}: choose from {', '.join(COMMANDS)}")
    args.commands = args.commands or list(COMMANDS)
    t0 = time.perf_counter()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        results = sweep(args.commands, args.points, args.seed, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="timoe-kill-sweep-") as tmp:
            results = sweep(args.commands, args.points, args.seed, Path(tmp))
    failed = [r for r in results if not r["ok"]]
    print(
        f"\n{len(results) - len(failed)}/{len(results)} kill points passed "
        f"in {time.perf_counter() - t0:.0f}s"
    )
    for name in args.commands:
        rows = [r for r in results if r["command"] == name]
        ok = sum(r["ok"] for r in rows)
        diff = max((r.get("max_abs_diff", 0.0) for r in rows if r["ok"]), default=0.0)
        points = ", ".join(r["point"] for r in rows)
        print(f"  {name:16s} {ok}/{len(rows)} ok, max |diff| {diff:.1e}: {points}")
    for r in failed:
        print(f"FAILED {r['command']} {r['point']}: {r['error']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
