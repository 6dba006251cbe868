"""Throughput of `timoe train-expert`'s training step against a bare PyTorch loop.

    python benchmarks/train_throughput.py [--quick] [--json FILE] [--device auto|cpu|cuda]
                                          [--preset tiny] [--batch-size 8] [--seq-len N]
                                          [--steps N] [--repeats R] [--no-gpu]

Same model (same init), same batch, measured side by side in one process:

- bare loop: `_, loss = model(x, y); loss.backward(); AdamW.step(); zero_grad()`;
- train step: the loop's own `Trainer.step` (timoe_core.train.loop): lr from the WSD
  schedule, autocast context, loss / grad_accum, gradient clipping, AdamW with
  decay-on-matrices groups;
- train loop with data: `Trainer.step` plus what `run_training` does around it every
  step: `ShuffledOrder.take` and the memmap reads of the windows (`ExpertTask.batch`).

The sides alternate (order rotated) for `--repeats` rounds of `--steps` steps after a
warm-up. tokens/s figures are medians over rounds; the overhead is bare / train - 1
within each round (back to back, so other load on the machine mostly cancels), median
over rounds (target <= 10%).

Model FLOP/s = GPT.flops_per_token() (6N + attention) x tokens/s, as a fraction of the
fp32 matmul peak measured here (torch.mm of square fp32 matrices, best of several).

With CUDA (unless --no-gpu): gpt2-124m, bf16 autocast, torch.compile, fused AdamW, same
comparison, and MFU against the measured bf16 matmul peak and the device's nominal
dense bf16 peak. Without CUDA that section prints that it was skipped.

`--json FILE` writes `{name: {"value", "unit", "ratio_to", "target"}}`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from tests.helpers import make_data_dir
from timoe_core.config import TrainingConfig
from timoe_core.data.windows import TokenWindows
from timoe_core.model.gpt import GPT, preset_config
from timoe_core.train.distributed import DistEnv
from timoe_core.train.expert import ExpertTask
from timoe_core.train.loop import DataPosition, Trainer

OVERHEAD_TARGET = 0.10
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets (SXM parts).
NOMINAL_BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L4": 121e12}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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

    def __init__(self, model: GPT, cfg: TrainingConfig, device: torch.device, amp: bool):
        self.model = model.to(device)
        self.fwd = torch.compile(self.model) if cfg.compile else self.model
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


def build(preset: str, seq_len: int, cfg: TrainingConfig, device: torch.device, data: Path):
    """Bare loop and train step on two copies of one initialised model."""
    mc = preset_config(preset, block_size=seq_len)
    torch.manual_seed(0)
    model = GPT(mc)
    twin = GPT(mc)
    twin.load_state_dict(model.state_dict())
    windows = TokenWindows(data, "train", [2013], seq_len)
    task = ExpertTask(twin, windows, None, seed=0, eval_windows=0)
    trainer = Trainer(task, cfg, DistEnv(device=device), total_steps=10**6)
    bare = Bare(model, cfg, device, amp=trainer.amp)
    return bare, trainer, task, mc


def time_steps(fn, n: int, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    sync(device)
    return time.perf_counter() - t


def compare(label, preset, seq_len, batch, cfg, device, data, steps, repeats, warmup, figures):
    bare, trainer, task, mc = build(preset, seq_len, cfg, device, data)
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, mc.vocab_size - 64, (batch, seq_len + 1), generator=g)
    x, y = rows[:, :-1].to(device), rows[:, 1:].to(device)
    order_pos = [DataPosition()]

    def bare_step(i):
        bare.step(x, y)

    def train_step(i):
        trainer.step(i, [(x, y)], 1)

    def loop_step(i):
        idx, order_pos[0] = task.order.take(order_pos[0], batch)
        trainer.step(i, (task.batch(part, device) for part in np.split(idx, 1)), 1)

    sides = {"bare": bare_step, "train_step": train_step, "train_loop": loop_step}
    for fn in sides.values():  # warm-up (and compilation)
        time_steps(fn, warmup, device)
    rounds: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(repeats):
        for name in names[r % 3 :] + names[: r % 3]:  # rotate the order between rounds
            rounds[name].append(batch * seq_len * steps / time_steps(sides[name], steps, device))
    # Medians over rounds; the overhead from the ratio within each round (the sides of a
    # round ran back to back, so load from other processes mostly cancels), median.
    tps = {k: statistics.median(v) for k, v in rounds.items()}
    overhead = statistics.median(b / t for b, t in zip(rounds["bare"], rounds["train_step"])) - 1
    overhead_data = (
        statistics.median(b / t for b, t in zip(rounds["bare"], rounds["train_loop"])) - 1
    )
    flops_per_token = GPT(mc).flops_per_token()
    print(
        f"[{label}] preset {preset}, batch {batch} x {seq_len} tokens, amp {trainer.amp}, "
        f"compile {cfg.compile}, {steps} steps x {repeats} rounds"
    )
    for name, runs in rounds.items():
        print(
            f"  {name:>10}: {tps[name]:>12,.0f} tokens/s  (rounds: "
            f"{', '.join(f'{r:,.0f}' for r in runs)})"
        )
    print(
        f"  train step overhead vs bare: {overhead:+.1%} (target <= {OVERHEAD_TARGET:.0%}); "
        f"with data loading: {overhead_data:+.1%}"
    )
    base = f"{label}_bare_loop_tokens_per_s"
    figures[base] = {
        "value": round(tps["bare"]),
        "unit": "tokens/s",
        "ratio_to": None,
        "target": None,
    }
    figures[f"{label}_train_step_tokens_per_s"] = {
        "value": round(tps["train_step"]),
        "unit": "tokens/s",
        "ratio_to": base,
        "target": round(1 / (1 + OVERHEAD_TARGET), 3),
    }
    figures[f"{label}_train_loop_with_data_tokens_per_s"] = {
        "value": round(tps["train_loop"]),
        "unit": "tokens/s",
        "ratio_to": base,
        "target": round(1 / (1 + OVERHEAD_TARGET), 3),
    }
    figures[f"{label}_train_step_overhead"] = {
        "value": round(overhead, 4),
        "unit": "fraction",
        "ratio_to": None,
        "target": OVERHEAD_TARGET,
    }
    return tps, flops_per_token


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument(
        "--device",
        default="cpu",
        choices=["auto", "cpu", "cuda"],
        help="device of the first section (default cpu)",
    )
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=None, help="default: the preset's")
    ap.add_argument("--steps", type=int, default=None, help="steps per round")
    ap.add_argument("--repeats", type=int, default=None, help="rounds per side")
    ap.add_argument("--no-gpu", action="store_true", help="skip the CUDA section")
    args = ap.parse_args(argv)
    steps = args.steps or (2 if args.quick else 5)
    repeats = args.repeats or (3 if args.quick else 5)
    device = torch.device(
        "cuda"
        if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    seq_len = args.seq_len or preset_config(args.preset).block_size
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="timoe-bench-train-") as tmp:
        data = make_data_dir(
            Path(tmp),
            years=(2013,),
            tokens_per_year=(seq_len + 1) * 4096,
            seq_len=seq_len,
            pattern="random",
        )
        label = device.type
        cfg = TrainingConfig(batch_size=args.batch_size, device=device.type)
        print(f"{label}: {torch.get_num_threads()} threads, torch {torch.__version__}")
        n = 2048 if device.type == "cpu" else 8192
        peak = matmul_peak(device, torch.float32, n, 5)
        tps, fpt = compare(
            label,
            args.preset,
            seq_len,
            args.batch_size,
            cfg,
            device,
            data,
            steps,
            repeats,
            warmup=1,
            figures=figures,
        )
        peak = max(peak, matmul_peak(device, torch.float32, n, 5))  # before and after
        mflops = fpt * tps["train_step"]
        print(
            f"  fp32 matmul peak {peak / 1e9:,.1f} GFLOP/s; model {fpt / 1e6:,.1f} MFLOP/token "
            f"-> {mflops / 1e9:,.2f} GFLOP/s = {mflops / peak:.1%} of the fp32 peak"
        )
        figures[f"{label}_fp32_matmul_peak"] = {
            "value": round(peak),
            "unit": "FLOP/s",
            "ratio_to": None,
            "target": None,
        }
        figures[f"{label}_train_step_model_flops"] = {
            "value": round(mflops),
            "unit": "FLOP/s",
            "ratio_to": f"{label}_fp32_matmul_peak",
            "target": None,
        }
        figures[f"{label}_train_step_fraction_of_fp32_peak"] = {
            "value": round(mflops / peak, 4),
            "unit": "fraction",
            "ratio_to": None,
            "target": None,
        }

        if args.no_gpu or not torch.cuda.is_available():
            print("gpu: skipped (" + ("--no-gpu" if args.no_gpu else "no CUDA device") + ")")
        else:
            gpu_section(args, data_dir=Path(tmp), figures=figures)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def gpu_section(args: argparse.Namespace, data_dir: Path, figures: dict) -> None:
    """gpt2-124m, bf16, torch.compile: tokens/s and MFU."""
    device = torch.device("cuda")
    seq_len, batch = 1024, 16
    data = make_data_dir(
        data_dir,
        years=(2013,),
        tokens_per_year=(seq_len + 1) * 1024,
        seq_len=seq_len,
        pattern="random",
        name="gpu-data",
    )
    cfg = TrainingConfig(batch_size=batch, device="cuda", compile=True)
    steps = 10 if args.quick else 20
    repeats = 3 if args.quick else 5
    tps, fpt = compare(
        "gpu_gpt2_124m_bf16_compile",
        "gpt2-124m",
        seq_len,
        batch,
        cfg,
        device,
        data,
        steps,
        repeats,
        warmup=5,
        figures=figures,
    )
    peak = matmul_peak(device, torch.bfloat16, 8192, 10)
    name = torch.cuda.get_device_name(device)
    nominal = next((v for k, v in NOMINAL_BF16_PEAK.items() if k in name), None)
    achieved = fpt * tps["train_step"]
    line = f"  {name}: measured bf16 matmul peak {peak / 1e12:,.0f} TFLOP/s; model "
    line += f"{achieved / 1e12:,.1f} TFLOP/s = MFU {achieved / peak:.1%} of measured"
    if nominal:
        line += f", {achieved / nominal:.1%} of nominal {nominal / 1e12:,.0f}"
    print(line)
    label = "gpu_gpt2_124m_bf16_compile"
    figures["gpu_bf16_matmul_peak"] = {
        "value": round(peak),
        "unit": "FLOP/s",
        "ratio_to": None,
        "target": None,
    }
    figures[f"{label}_mfu_of_measured_peak"] = {
        "value": round(achieved / peak, 4),
        "unit": "fraction",
        "ratio_to": None,
        "target": 0.4,
    }
    if nominal:
        figures[f"{label}_mfu_of_nominal_peak"] = {
            "value": round(achieved / nominal, 4),
            "unit": "fraction",
            "ratio_to": None,
            "target": 0.4,
        }


if __name__ == "__main__":
    sys.exit(main())
