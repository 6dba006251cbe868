"""Throughput of `timoe train-expert`'s training step against a bare PyTorch loop.

    python -m benchmarks.train_throughput [--quick] [--json FILE] [--preset tiny]
                                          [--batch-size 8] [--seq-len N] [--steps N]
                                          [--repeats R]

Same model (same init), same batch, measured side by side in one process:

- bare loop: `_, loss = model(x, y); loss.backward(); AdamW.step(); zero_grad()`;
- train step: the loop's own `Trainer.step` (timoe_core.train.trainer): lr from the WSD
  schedule, autocast context, loss / grad_accum, gradient clipping, AdamW with
  decay-on-matrices groups;
- train loop with data: `Trainer.step` plus what `run_training` does around it every
  step: `ShuffledOrder.take` and the memmap reads of the windows (`ExpertTask.batch`).

Each round runs `--steps` steps of every side, the order rotated between rounds, after
a warm-up; tokens/s are medians over rounds, the overhead is bare / train - 1 within
each round, median over rounds (target <= 10%).

Model FLOP/s = GPT.flops_per_token() (6N + attention) x tokens/s, as a fraction of the
fp32 matmul peak measured in the same run (torch.mm of square fp32 matrices, best of
several, before and after the rounds). The GPU figures (gpt2-124m, bf16, compile) are
in benchmarks/gpu.py and use `compare` from here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Figures, figure, fmt_runs, interleaved_rounds, sync, write_json
from tests.helpers import make_data_dir
from timoe_core.config import TrainingConfig
from timoe_core.data.windows import TokenWindows
from timoe_core.model.gpt import GPT, GPTConfig, preset_config
from timoe_core.train.distributed import DistEnv
from timoe_core.train.expert_task import ExpertTask
from timoe_core.train.orders import DataPosition
from timoe_core.train.trainer import Trainer

TARGET_OVERHEAD = 0.10


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Best FLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    sync(device)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        sync(device)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
    return best


class Bare:
    """The bare PyTorch loop."""

    def __init__(self, model: GPT, cfg: TrainingConfig, device: torch.device, amp: bool,
                 compiled: bool = False):
        self.model = model.to(device)
        self.fwd = torch.compile(self.model) if compiled else self.model
        self.amp, self.device = amp, device
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            weight_decay=cfg.weight_decay,
            fused=device.type == "cuda" or None,
        )

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            _, loss = self.fwd(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def compare(
    label: str,
    mc: GPTConfig,
    batch: int,
    cfg: TrainingConfig,
    device: torch.device,
    data: Path,
    steps: int,
    repeats: int,
    warmup: int,
) -> tuple[Figures, float]:
    """Bare loop vs train step vs train loop with data, on two copies of one initialised
    model; (figures named `label`_..., the train step's tokens/s)."""
    seq_len = mc.block_size
    torch.manual_seed(0)
    model = GPT(mc)
    twin = GPT(mc)
    twin.load_state_dict(model.state_dict())
    task = ExpertTask(twin, TokenWindows(data, "train", [2013], seq_len), None, seed=0,
                      eval_windows=0)
    trainer = Trainer(task, cfg, DistEnv(device=device), total_steps=10**6)
    bare = Bare(model, cfg, device, amp=trainer.amp, compiled=trainer.runtime.compile)
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, mc.vocab_size - 64, (batch, seq_len + 1), generator=g)
    x, y = rows[:, :-1].to(device), rows[:, 1:].to(device)
    pos = [DataPosition()]

    def bare_steps() -> None:
        for _ in range(steps):
            bare.step(x, y)

    def train_steps() -> None:
        for i in range(steps):
            trainer.step(i, [(x, y)], 1)

    def loop_steps() -> None:
        for i in range(steps):
            idx, pos[0] = task.order.take(pos[0], batch)
            trainer.step(i, [task.batch(idx, device)], 1)

    sides = {"bare": bare_steps, "train_step": train_steps, "train_loop": loop_steps}
    # warm-up (and compilation): `warmup` rounds of steps, untimed
    r = interleaved_rounds(sides, repeats, warmup=warmup, device=device)
    tokens = batch * seq_len * steps
    tps = {k: tokens / r.median(k) for k in sides}
    overhead = r.median_ratio("train_step", "bare") - 1
    overhead_data = r.median_ratio("train_loop", "bare") - 1
    print(f"[{label}] {mc.n_layer} layers x {mc.n_embd}, batch {batch} x {seq_len} tokens, "
          f"amp {trainer.amp}, compile {trainer.runtime.compile}, {steps} steps x {repeats} rounds")
    for name in sides:
        print(f"  {name:>10}: {tps[name]:>12,.0f} tokens/s  (rounds "
              f"{fmt_runs(r.rates(name, tokens), digits=0)})")
    print(f"  train step overhead vs bare: {overhead:+.1%} (target <= {TARGET_OVERHEAD:.0%}); "
          f"with data loading: {overhead_data:+.1%}")
    base = f"{label}_bare_loop_tokens_per_s"
    f: Figures = {
        base: figure(round(tps["bare"]), "tokens/s"),
        f"{label}_train_step_tokens_per_s": figure(round(tps["train_step"]), "tokens/s"),
        f"{label}_train_loop_with_data_tokens_per_s": figure(round(tps["train_loop"]),
                                                             "tokens/s"),
        f"{label}_train_step_overhead": figure(round(overhead, 4), "fraction", base,
                                               TARGET_OVERHEAD, "<="),
        f"{label}_train_loop_with_data_overhead": figure(round(overhead_data, 4), "fraction",
                                                         base, TARGET_OVERHEAD, "<="),
    }
    return f, tps["train_step"]


def run(
    quick: bool = False,
    *,
    preset: str = "tiny",
    batch: int = 8,
    seq_len: int | None = None,
    steps: int | None = None,
    repeats: int | None = None,
) -> Figures:
    """The CPU training figures (fp32, the default on CPU)."""
    steps = steps or (1 if quick else 4)
    repeats = repeats or 5
    device = torch.device("cpu")
    mc = preset_config(preset, block_size=seq_len)
    cfg = TrainingConfig(batch_size=batch, device="cpu")
    print(f"train: {torch.get_num_threads()} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="timoe-bench-train-") as tmp:
        data = make_data_dir(Path(tmp), years=(2013,), seq_len=mc.block_size,
                             tokens_per_year=(mc.block_size + 1) * max(64, 4 * batch * steps),
                             pattern="random")
        peak = matmul_peak(device, torch.float32, 2048, 5)
        f, tps = compare("cpu", mc, batch, cfg, device, data, steps, repeats, warmup=1)
        peak = max(peak, matmul_peak(device, torch.float32, 2048, 5))  # before and after
    fpt = GPT(mc).flops_per_token()
    achieved = fpt * tps
    print(f"  fp32 matmul peak {peak / 1e9:,.1f} GFLOP/s; model {fpt / 1e6:,.1f} MFLOP/token "
          f"-> {achieved / 1e9:,.2f} GFLOP/s = {achieved / peak:.1%} of the fp32 peak")
    f["cpu_fp32_matmul_peak_flops"] = figure(round(peak), "FLOP/s")
    f["cpu_train_step_model_flops"] = figure(round(achieved), "FLOP/s")
    f["cpu_train_step_fraction_of_fp32_peak"] = figure(
        round(achieved / peak, 4), "fraction", "cpu_fp32_matmul_peak_flops")
    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=None, help="default: the preset's")
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default 4; quick 1)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 5)")
    args = ap.parse_args(argv)
    figures = run(args.quick, preset=args.preset, batch=args.batch_size, seq_len=args.seq_len,
                  steps=args.steps, repeats=args.repeats)
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
