"""The GPU section: the paper's expert size (gpt2-124m) where it is meant to run.

    python -m benchmarks.gpu [--quick] [--json FILE]

Runs only when CUDA is present; elsewhere it raises `Skipped` with the reason (the
runner prints it and records it in the JSON's `_run` record). On one GPU:

- training: gpt2-124m, batch 16 x 1024, bf16 autocast, torch.compile, fused AdamW; the
  train step vs the bare loop (`train_throughput.compare`), tokens/s per GPU, and MFU
  (GPT.flops_per_token() x tokens/s) against the bf16 matmul peak measured in the same
  run and against the device's nominal dense bf16 peak (target >= 40%);
- the mixture: six gpt2-124m experts, batch 8 x 1024, fp32 log-probs: overhead vs its
  eligible experts alone, memory vs one expert, naive dense contrast
  (`mixture.measure`, peak memory from the CUDA allocator);
- evaluation: `evaluate_perplexity` vs the bare mixture forward, bf16, gpt2-124m;
- decoding: six gpt2-124m experts, fp32, 1, 2 and 6 eligible, against the GPU's own
  memory-bandwidth roofline measured in the same rounds (`generate.run` on CUDA).

Training runs twice, with torch.compile and without (`compile=False`): the MFU of each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import evaluate, generate, mixture
from benchmarks.common import Figures, Skipped, figure, write_json
from benchmarks.train_throughput import compare, matmul_peak
from tests.helpers import make_data_dir
from timoe_core.config import TrainingConfig
from timoe_core.model.gpt import GPT, preset_config

TARGET_MFU = 0.40
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets (SXM parts).
NOMINAL_BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L4": 121e12}


def skip_reason() -> str | None:
    """Why the GPU section cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False)"
    return None


def run(quick: bool = False) -> Figures:
    why = skip_reason()
    if why is not None:
        raise Skipped(why)
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    print(f"gpu: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    f: Figures = {}
    f.update(_training(device, name, quick, compiled=True))
    f.update(_training(device, name, quick, compiled=False))
    with tempfile.TemporaryDirectory(prefix="timoe-bench-gpu-mixture-") as tmp:
        mix = mixture.load_mixture(Path(tmp), "gpt2-124m", 1024, device)
        f.update(mixture.measure(mix, 8, [1024], 3 if quick else 7,
                                 prefix="gpu_mixture_gpt2_124m", scaling=False))
        del mix
    torch.cuda.empty_cache()
    f.update(evaluate.run(quick, device="cuda", preset="gpt2-124m", experts=6,
                          windows=8 if quick else 32, batch_size=16))
    torch.cuda.empty_cache()
    f.update(generate.run(quick, preset="gpt2-124m", device="cuda", prefix="gpu_generate",
                          full=False))
    return f


def _training(device: torch.device, name: str, quick: bool, compiled: bool) -> Figures:
    seq_len, batch = 1024, 16
    mc = preset_config("gpt2-124m", block_size=seq_len)
    cfg = TrainingConfig(batch_size=batch, device="cuda", compile=compiled)
    label = "gpu_gpt2_124m_bf16_" + ("compile" if compiled else "eager")
    with tempfile.TemporaryDirectory(prefix="timoe-bench-gpu-train-") as tmp:
        data = make_data_dir(Path(tmp), years=(2013,), tokens_per_year=(seq_len + 1) * 256,
                             seq_len=seq_len, pattern="random")
        f, tps = compare(label, mc, batch, cfg, device, data, steps=10 if quick else 20,
                         repeats=3 if quick else 5, warmup=1)
    peak = matmul_peak(device, torch.bfloat16, 8192, 10)
    nominal = next((v for k, v in NOMINAL_BF16_PEAK.items() if k in name), None)
    achieved = GPT(mc).flops_per_token() * tps
    line = (f"  {name}: bf16 matmul peak {peak / 1e12:,.0f} TFLOP/s measured; model "
            f"{achieved / 1e12:,.1f} TFLOP/s = MFU {achieved / peak:.1%} of measured")
    if nominal:
        line += f", {achieved / nominal:.1%} of nominal {nominal / 1e12:,.0f}"
    print(line)
    f[f"{label}_bf16_matmul_peak_flops"] = figure(round(peak), "FLOP/s")
    f[f"{label}_tokens_per_s_per_gpu"] = figure(round(tps), "tokens/s")
    f[f"{label}_mfu_of_measured_peak"] = figure(round(achieved / peak, 4), "fraction",
                                                f"{label}_bf16_matmul_peak_flops", TARGET_MFU,
                                                ">=")
    if nominal:
        f[f"{label}_nominal_bf16_peak_flops"] = figure(nominal, "FLOP/s")
        f[f"{label}_mfu_of_nominal_peak"] = figure(
            round(achieved / nominal, 4), "fraction", f"{label}_nominal_bf16_peak_flops",
            TARGET_MFU, ">=")
    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    try:
        figures = run(args.quick)
    except Skipped as exc:
        print(f"gpu: skipped ({exc})")
        return 0
    if args.json:
        write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
