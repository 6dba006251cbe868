"""docs/benchmarks.md from the suite's JSON: `python -m benchmarks.report [FILE] [--out MD]`.

The page is generated, never edited by hand: the machine and the command of the run,
a table of every figure that has a target (met or missed), then one section per group
with its method (fixed text below) and all its figures. Notes on a missed target are
printed only when that target is missed in the file, so the page never explains a miss
that did not happen nor hides one that did. The JSON the committed page was made from is
docs/benchmarks.json (tests/test_benchmarks.py checks that the two agree).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.__main__ import GROUPS
from benchmarks.common import target_met

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
DEFAULT_JSON = ROOT / "docs" / "benchmarks.json"
REGENERATE = ("python -m benchmarks --quick --json docs/benchmarks.json && "
              "python -m benchmarks.report docs/benchmarks.json")

INTRO = """\
Every figure here is a ratio measured in one run against its peer or limit: the two
sides run in the same process, on the same data, in alternating order (each round runs
every side once, the order rotated between rounds, after a warm-up). Times and rates
are medians over rounds; ratios are medians of the per-round ratios, because the sides
of a round ran back to back and load from other processes mostly cancels in them. No
test asserts a timing: the figures come from `python -m benchmarks` only.

`python -m benchmarks --json FILE` writes every figure as
`{name: {"value", "unit", "ratio_to", "target", "goal"}}` (`ratio_to`: the figure it was
measured against; `goal`: which side of `target` is good) plus a `_run` record (machine,
command, date, load average, per group its status and seconds). This page is generated
from that file by `python -m benchmarks.report FILE`; regenerate it with

    {regenerate}

`--only GROUP` runs one group (`python -m benchmarks --list` lists them), `--threads N`
sets torch's threads. Each group is also a module with its own options
(`python -m benchmarks.mixture --help`)."""

# Fixed text per group: how it is measured and what the figures mean.
METHOD: dict[str, str] = {
    "prepare_data": """\
On the same text (the built-in corpus written as JSONL, a few MB): the ceiling is
tiktoken's `encode_ordinary_batch` on the texts already in memory, as the target was set;
the encoder is tiktoken's `encode_to_numpy`, the call prepare-data makes per document,
on the same texts and threads: it builds no Python int per token, which the batch
encoder does and which costs more than the BPE itself, so it is the tokeniser's own
rate, and the ratio to it (no target) is what end-to-end keeps of it; end-to-end is
`prepare_data` from the JSONL file to a complete data dir (read, parse, dates, split
hash, tokenise, write, sha256, manifest) in a child process, its time taken inside the
child (interpreter start-up excluded), counting the same text tokens (not the EOTs it
adds). Both with every core ("all") and with one thread / worker. prepare-data overlaps
parsing on the main thread with tokenisation on `workers` threads (tiktoken's Rust BPE
runs without the GIL), so with one worker it uses a second core for the rest, and it
can beat the batch encoder. With every core, the main thread's share (reading, JSON,
dates, split hash, writing) competes with the workers for the same 2 cores.
Peak RSS is the child's high-water mark; its growth over the post-import RSS stays
bounded whatever the corpus size (streaming). Files are flat uint16: 2 bytes a token.""",
    "train": """\
Same model (same init) and same batch, in one process: the bare loop is
`model(x, y) -> loss.backward() -> AdamW.step() -> zero_grad()`; the train step is
`timoe_core.train.trainer.Trainer.step` (WSD lr, autocast context, loss / grad-accum,
gradient clipping, AdamW with decay-on-matrices groups); "with data" adds what
`run_training` does around it every step (`ShuffledOrder.take` and the memmap reads of
the windows). `tiny` preset (2 layers, 128 wide, 50304-word output layer), batch 8 x 128
tokens, fp32 (bf16 autocast is off on CPU: bf16 matmul on CPUs without AMX is about 100x
slower than fp32). Model FLOP/s = `GPT.flops_per_token()` (6N + attention) x tokens/s,
against the fp32 peak of a 2048^3 `torch.mm` measured before and after the rounds. The
tiny preset's cost on a CPU is the 50304-wide output layer and its softmax (1024 x 50304
fp32 logits per step, memory-bound), not the two blocks: that is why it reaches only a
fraction of the matmul peak.""",
    "mixture": """\
Six random `tiny` experts, one per default slice; one batch of random tokens; fp32,
no_grad. (a) the eligible experts run alone, `expert.log_probs(x)` one after the other;
(a') the same with no allocation (logits into one reused buffer, log-softmax in place),
the compute floor (a) contains; (b) `TiMoE.mixture_log_probs(x, date)`, which streams
expert by expert: each eligible expert's hidden states, its vocabulary projection in
chunks of positions, log-softmax in place, folded into one (B, T, V) output with
`logaddexp` in place; (c) a naive dense mixture that runs every expert and keeps the
masked ones in an (experts, B, T, V) stack with weight 0, then `logsumexp`. The
headline is at query date 2016 (2 of 6 experts eligible). Peak memory is the peak of
live tensor bytes during the call (the output included, the loaded weights not), from
the PyTorch profiler's allocation events; the mixture's is the output plus one chunk
and one expert's activations, whatever the number of experts, so it stays at or below
one expert's `log_probs` (which holds logits and log-probs, two (B, T, V) tensors).
Scaling: the same with 1..6 experts eligible (query dates 2013, 2015, ..., 2023) and
with the sequence length; and (a), (a'), (b) at 2016 with two experts of the `small`
preset (6 layers, 384 wide): the mixing work (`logaddexp` and the 1/n weight, once per
vocabulary entry and position) costs what it costs whatever the expert, so its share
falls as the experts grow.""",
    "snapshots": """\
What a snapshot at every period end costs, and what it is worth, per snapshot kind
(`--snapshot-kind average|decay`). Compute: a dense `--all-years` series over 24 years
of random tokens (vocab 2048, the `tiny` preset, batch 8 x 128 tokens, 8 steps a
stage): 24 chronological stages, as many as the months of a 2-year slice with monthly
cutoffs (a stage is a stage: the loop does not know what a period is), so 23 snapshots;
the averaged kind (no extra step: a running average along the main line), the
decay-branch kind (a branch of decay_fraction of its stage, after a checkpoint, per
snapshot) and one unstaged run (`--snapshots none`, `--max-steps` = the staged main
steps and final decay), interleaved in rounds; target averaged / unstaged <= 1.10x.
Quality: a dense series on the built-in corpus of 2013-2018 at the demo's model size
(200 documents a year, 2 layers x 128, 64 tokens, lr 3e-3; --quick: 20 steps a stage of
batch 4): at every year end but the last, the held-out perplexity of the snapshot on
the validation windows of every year up to it, for the decay-branch snapshot, the
averaged one (one run per horizon `--snapshot-average-fraction`; `_bf16`: the same
snapshot rounded to bfloat16, as `--snapshot-dtype bfloat16` stores it) and the raw
stable-phase weights there (the decay run's pre-branch checkpoint); the ratios to decay
are means over the year ends with a 95% t-interval; target averaged <= 1.03x decay.
The `monthly` figures: the same series with monthly cutoffs, one pass over each month's
new windows a stage (as the monthly demo trains), every month-end snapshot on the
held-out text dated up to it. Storage: bytes per artefact kind at gpt2-124m size,
computed from parameter counts (no 124M model trained), and the files a 2013-2024 build
with 2-year slices writes with yearly and monthly cutoffs (one router snapshot and one
adapted expert per router stage; `adapted_blocks`: `coadapt --adapted-weights blocks`,
whose adapted experts are bfloat16 deltas without the token embedding; router snapshots
counted whole, though stored as deltas they hold only the rows that changed).""",
    "router": """\
Six random `tiny` experts, data of random tokens for 2013-2024 (a batch mixes query
dates, as in training). One optimizer step of `LearnedAvgTask` through the shared
`Trainer` (batch read from disk, router forward and backward, every eligible expert run
under no_grad for its target-token log-probs only, AdamW) against the floor: the
eligible experts' own no-grad forward on the rows where each is eligible. The cache
figures: the same step reading the experts' target log-probs from the on-disk cache
(epoch 2 onwards), and the cache build's rate (epoch 1's extra). Exactly what each side
runs: `run_router_training` in benchmarks/mixture.py.""",
    "staged": """\
What point-in-time training costs on top of the unstaged runs it replaces, for the same
tokens: both sides are the library's entry points (`train_expert`, `train_router`), each
into a fresh folder, interleaved in rounds after a counted warm-up run of each. `tiny`
preset (2 layers, 128 wide) on a synthetic vocabulary of 2048 (random tokens), fp32,
batch 8 x 128 tokens, 32 steps per stage (--quick runs 5 rounds instead of 7, at the
same sizes: shorter stages would measure mostly a stage's fixed cost). Expert: the slice
2013-2014 in its two yearly stages (`--snapshots stages`, the default, `--cutoff-every
year --snapshot-kind decay --steps-per-stage N`: a decay branch after stage 2013 saves
its snapshot; the snapshots group measures monthly stages and the averaged kind)
against `--snapshots none` with `--max-steps` = the staged run's main steps (both stages
and the final decay); target staged / none <= 1.10x. Optimizer steps are counted on
each side (`Trainer.apply`): branch steps / main steps is the decay branches' share,
expected about (stages - 1) x decay_fraction / stages. The rest of the overhead, also in
seconds per snapshot, is fixed per snapshot (the pre-branch checkpoint, the copy and
restore of the state, the snapshot's files), so its share falls as stages grow.
Router: learned-avg over two experts (2013-2014, 2015-2016) on 2013-2016; staged
(`--policy point-in-time --cutoff-every year`: one stage per artefact cutoff, 2013 ...
2016, each on its own year's windows with `--steps-per-stage N`, over staged experts with snapshots) against
the unstaged router (`--policy inclusive`, one run over the same four years with
`--max-steps` = the staged steps in all, over `--snapshots none` experts of the same
shape: today the inclusive router refuses experts with snapshots). Both see one
eligible expert per window in 2013-2014 and two in 2015-2016, so a step does the same
work; target staged / unstaged <= 1.10x, and the seconds per extra stage (a stage's
run dir, checkpoint, router snapshot, cache files and the artefacts it loads) is the
fixed part. Each stage reads its windows twice, so each builds a log-prob cache; the
frozen experts' forward passes are counted (windows x experts through
`target_log_probs`) against the training windows x their usable experts: 1.0 means
every window went through each frozen expert once across all stages (2.0 would mean
no cache). Each stage trains on its own year only, so no window is computed twice.""",
    "cutoffs": """\
Staleness is computed from the cutoffs, no model: for every day d from 2014-01-01 to
2024-12-31 (4018 query days), an answer as of d uses artefacts with cutoff <= d, the
latest being the last period end on or before d with cutoffs every year, quarter or
month from 2013 on; its staleness is d minus that cutoff (`point_in_time.staleness_days`).
The figures are the mean and the largest over those days (the smallest is 0, on a period
end). A router stage's fixed cost: `train_router` (learned-avg over two random `tiny`
experts, documents dated across each of 2013-2016, batch 8 x 32 tokens, each stage one
pass over its new windows) with `--cutoff-every year` against `--cutoff-every month`,
interleaved in rounds after a counted warm-up of each: both read the same windows in
about the same steps, so (month seconds - year seconds) / (month stages - year stages)
is what one more stage costs; times 144 (12 years of months) is the fixed cost of a
monthly router over 2013-2024. Exactly what each side runs: benchmarks/cutoffs.py.""",
    "generate": """\
Six random `small` experts (6 layers, 384 wide, vocab 50304) with a 512-token context,
fp32, greedy decoding with the KV cache (a `KVCache` per expert, filled in place)
of 64 new tokens (32 with --quick) after a 256-token random prompt, through the avg
mixture as of 2014, 2016 and 2024: 1, 2 and 6 eligible experts. A decoding step reads
every weight of every eligible expert once (blocks, final LayerNorm, the 50304-wide
vocabulary projection) and its KV cache, and reuses nothing between tokens: it is bound
by memory bandwidth. The roofline is bandwidth / (eligible experts x (weight bytes + KV
bytes at the mean context)), the bandwidth measured in the same rounds as the decoding:
the best of a 256 MiB contiguous copy (bytes read + written), a read-only sum over
256 MiB and an fp32 matrix-vector product, through the experts' own `Linear`, of a
256 MiB weight. The fraction of what that matrix-vector product streams is given beside
it: it separates the decoding's own overhead from the product kernel's. Decode tokens/s
count the tokens after the first (the prompt's forward pass excluded); the fraction is
the median of the per-round fractions (target >= 50%). The full run also decodes the
2-expert case by full recomputation of the context every token and checks the tokens
equal (the cache's speed-up, no target).

What a decoding step does on CPU, and why: MKL runs a one-row product (1, in) x (in, out)
on one core, at about a third of the memory's bandwidth on this machine (13 GB/s through
the vocabulary projection, 14 GB/s through the blocks' weights, where a read-only sum
streams 40-75 GB/s), so `Linear` computes up to 4 rows as one batched product over
slices of the weight's rows, one slice per thread (31-47 GB/s through the blocks'
weights in two measurements). A step of one new position runs `GPT._decode_step`, the
blocks' math as one loop over the layers' weights, without the module calls and views
of the general forward (5-10% of a step), and generation runs under
`torch.inference_mode` (about 3%). What is left beside the products is attention over
the KV cache (about a tenth of a step) and the step's few hundred small operations,
each slower than on warm caches because the step has just streamed every weight
through them. That part does not shrink when the memory is faster, so the fraction
depends on the machine's state: on this shared machine the read-only sum streamed
40-48 GB/s in some runs and 69-75 GB/s in others, and the fractions were 60-72% and
51-53% respectively (`python -m benchmarks.generate --quick --repeats 3` and the suite,
2026-12-02).""",
    "evaluate": """\
Random `tiny` experts combined by avg, a synthetic data dir of val tokens for 12 years.
The bare forward is `target_log_probs` alone on batches already in memory, under
inference_mode; evaluate is `evaluate_perplexity` end to end (memmap reads, batching,
the date of every row, NLL sums per year), on the same windows in the same batches with
the same query dates: all as of 2024, and each window as of its own year.""",
    "gpu": """\
Runs only where CUDA is present. Training: gpt2-124m (12 layers, 768 wide, the paper's
expert size), batch 16 x 1024, bf16 autocast, `torch.compile`, fused AdamW; the train
step vs the bare loop as on CPU, tokens/s per GPU, and MFU against the bf16 matmul peak
measured in the same run and the device's nominal dense bf16 peak (target >= 40%).
Mixture: six gpt2-124m experts, batch 8 x 1024, overhead vs the experts alone and
memory vs one expert (CUDA allocator peaks). Evaluation: `evaluate_perplexity` vs the
bare forward with gpt2-124m experts in bf16. Training is measured with `torch.compile`
and without (eager), each with its MFU. Decoding: six gpt2-124m experts, fp32, 1, 2 and
6 eligible, against the GPU's memory-bandwidth roofline measured in the same rounds,
as in the CPU `generate` section.""",
}

# Printed under a group's table only when the named figure misses its target in the
# file: what the profile showed, not a guess.
_DECODE_NOTE = (
    "What holds decoding below half the roofline here, per torch.profiler (one `small` "
    "expert, 2 threads; 2026-12-02): of a step of about 4 ms, the vocabulary projection "
    "streams its 77 MB at 40-60 GB/s (1.3-2.1 ms), the blocks' products their 42 MB at "
    "about 40 GB/s (1.1 ms), attention over the KV cache takes 0.4-0.6 ms, and the rest "
    "(about 0.8 ms, measured on a 64-wide model where the products cost nothing) is the "
    "step's few hundred small operations. The machine's bandwidth swings between about "
    "40 and 66 GB/s from minute to minute; the fraction is lowest when it is highest, "
    "since the fixed part of a step does not shrink with it.")
_STAGED_NOTE = (
    "What staging adds beyond the decay branches' steps is a fixed cost per snapshot and "
    "per router stage, not per token: the seconds figures (`staged_expert_fixed_seconds_"
    "per_snapshot`, `staged_router_seconds_per_extra_stage`) divided by a stage's length "
    "give the overhead at any size, and the stages here are a second or less of training. "
    "Per the profiler (cProfile, one thread, sizes like these; 2026-12-02), most of it is "
    "writing files durably: a staged expert writes a checkpoint before each branch and "
    "the snapshot after it; a staged router writes each stage's checkpoint, router "
    "snapshot and cache files, 80 fsyncs against the unstaged run's 22 (about half its "
    "extra seconds), and loads each stage's artefacts (the snapshots too).")
MISSED_NOTES: dict[str, str] = {
    f"generate_{n}_eligible_fraction_of_roofline": _DECODE_NOTE for n in (1, 2, 6)
} | {f"staged_{k}_ratio_to_unstaged": _STAGED_NOTE for k in ("expert", "router")}


# Measured once, by hand, against the paper's released code (not part of the suite: it
# needs that code checked out); the method is stated with the table.
EQUAL_COMPUTE = """\
## Quality at equal training compute (independent, chained and shared-base experts against the dense series)

Measured by `python scripts/equal_compute.py --out /tmp/eqc_new` (the `small` size), not
by `python -m benchmarks`, on the built-in corpus dated to the day (40 documents a year,
2013-2024), the demo's model at 1 layer x 64 wide (seq 64, batch 8, lr 3e-3), 8 steps
per year stage. Every row trained 108 optimizer steps of 8 x 64 tokens (decay branches
counted): six independent experts (2 x 8 steps + a branch + a final decay each); the
same chained (`--init-from previous`); a shared base on 2013 (`--base --until 2013`, 11
steps + decay) and six experts started from it at 7 steps a stage; the dense model (12
stages of 8 steps, 11 branches, a final decay), read as the leak-free series and as the
all-years model. learned-avg adds 1 router step per year (12) to each family alike.
Held-out perplexity of each year as of that year (its own held-out windows, up to 4 of
64 tokens: a few hundred tokens a year, so per-year figures are rough; the mean's
interval is missing because a year has 1 window), and 187 built-in questions each as of
its own date, each rate with its count and 95% Wilson interval. x86_64, 2 cores, torch
2.13.0+cpu, 2 threads; about 6 minutes in all (an earlier run on the corpus dated by
year, at load 8-12, took 31).

|  | independent avg | independent learned-avg | chained avg | chained learned-avg | shared-base avg | shared-base learned-avg | dense series (leak-free) | dense (all years) |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| training steps x batch x seq | 108 x 8 x 64 | 108 x 8 x 64 | 108 x 8 x 64 | 108 x 8 x 64 | 108 x 8 x 64 | 108 x 8 x 64 | 108 x 8 x 64 | 108 x 8 x 64 |
| strategy | avg | learned-avg | avg | learned-avg | avg | learned-avg | dense-series | dense |
| ppl, mean of 12 years [95% CI], point-in-time | 1,282 [no CI: a year has 1 window] | 1,256 [no CI: a year has 1 window] | 642.9 [no CI: a year has 1 window] | 618.0 [no CI: a year has 1 window] | 350.2 [no CI: a year has 1 window] | 340.6 [no CI: a year has 1 window] | 587.7 [no CI: a year has 1 window] |  |
| ppl 2013 | 5,444 | 5,444 | 5,444 | 5,444 | 498.1 | 498.1 | 5,444 |  |
| ppl 2014 | 638.9 | 638.9 | 638.9 | 638.9 | 253.5 | 253.5 | 638.9 |  |
| ppl 2015 | 1,404 | 1,278 | 438.0 | 407.3 | 421.2 | 408.2 | 329.6 |  |
| ppl 2016 | 696.1 | 696.0 | 258.6 | 209.3 | 271.8 | 271.7 | 163.0 |  |
| ppl 2017 | 1,125 | 1,069 | 241.8 | 210.3 | 394.0 | 381.6 | 136.4 |  |
| ppl 2018 | 712.5 | 709.9 | 173.7 | 135.8 | 314.7 | 308.7 | 96.60 |  |
| ppl 2019 | 1,180 | 1,133 | 171.4 | 142.8 | 421.4 | 409.9 | 88.80 |  |
| ppl 2020 | 652.4 | 650.0 | 76.91 | 53.42 | 257.6 | 248.8 | 34.80 |  |
| ppl 2021 | 867.5 | 838.7 | 68.53 | 50.09 | 292.7 | 279.4 | 25.10 |  |
| ppl 2022 | 673.0 | 672.1 | 63.53 | 39.30 | 272.7 | 259.7 | 28.90 |  |
| ppl 2023 | 1,127 | 1,093 | 73.87 | 49.88 | 425.1 | 405.3 | 31.43 |  |
| ppl 2024 | 866.8 | 854.3 | 65.08 | 35.28 | 379.6 | 362.2 | 35.15 |  |
| ppl, mean of 12 years [95% CI], NOT point-in-time (read later years) |  |  |  |  |  |  |  | 14.84 [no CI: a year has 1 window] |
| ppl 2013, not point-in-time |  |  |  |  |  |  |  | 7.86 |
| ppl 2014, not point-in-time |  |  |  |  |  |  |  | 8.41 |
| ppl 2015, not point-in-time |  |  |  |  |  |  |  | 13.99 |
| ppl 2016, not point-in-time |  |  |  |  |  |  |  | 8.49 |
| ppl 2017, not point-in-time |  |  |  |  |  |  |  | 11.69 |
| ppl 2018, not point-in-time |  |  |  |  |  |  |  | 12.86 |
| ppl 2019, not point-in-time |  |  |  |  |  |  |  | 14.45 |
| ppl 2020, not point-in-time |  |  |  |  |  |  |  | 11.04 |
| ppl 2021, not point-in-time |  |  |  |  |  |  |  | 11.49 |
| ppl 2022, not point-in-time |  |  |  |  |  |  |  | 14.94 |
| ppl 2023, not point-in-time |  |  |  |  |  |  |  | 27.76 |
| ppl 2024, not point-in-time |  |  |  |  |  |  |  | 35.15 |
| QA items | 187 | 187 | 187 | 187 | 187 | 187 | 187 | 187 |
| QA accuracy (k/n) [95% CI] | 25.7% (48/187) [19.9, 32.4] | 25.1% (47/187) [19.5, 31.8] | 21.9% (41/187) [16.6, 28.4] | 22.5% (42/187) [17.1, 29.0] | 23.5% (44/187) [18.0, 30.1] | 23.5% (44/187) [18.0, 30.1] | 24.6% (46/187) [19.0, 31.2] | 30.5% (57/187) [24.3, 37.4] |
| QA acc (norm) | 23.5% | 22.5% | 21.4% | 23.0% | 19.8% | 20.3% | 20.3% | 26.2% |
| past err | 32.1% (60/187) [25.8, 39.1] | 32.6% (61/187) [26.3, 39.6] | 33.2% (62/187) [26.8, 40.2] | 32.6% (61/187) [26.3, 39.6] | 31.0% (58/187) [24.8, 38.0] | 31.6% (59/187) [25.3, 38.5] | 33.2% (62/187) [26.8, 40.2] | 27.3% (51/187) [21.4, 34.1] |
| future err | 3.7% (7/187) [1.8, 7.5] | 3.7% (7/187) [1.8, 7.5] | 4.8% (9/187) [2.6, 8.9] | 4.8% (9/187) [2.6, 8.9] | 4.8% (9/187) [2.6, 8.9] | 4.8% (9/187) [2.6, 8.9] | 2.7% (5/187) [1.1, 6.1] | 6.4% (12/187) [3.7, 10.9] |
| irrelevant err | 38.5% (72/187) [31.8, 45.6] | 38.5% (72/187) [31.8, 45.6] | 40.1% (75/187) [33.3, 47.3] | 40.1% (75/187) [33.3, 47.3] | 40.6% (76/187) [33.9, 47.8] | 40.1% (75/187) [33.3, 47.3] | 39.6% (74/187) [32.8, 46.7] | 35.8% (67/187) [29.3, 42.9] |
| stale answers after a change that year | 33.9% (20/59) [23.1, 46.6] | 33.9% (20/59) [23.1, 46.6] | 35.6% (21/59) [24.6, 48.3] | 35.6% (21/59) [24.6, 48.3] | 30.5% (18/59) [20.3, 43.1] | 30.5% (18/59) [20.3, 43.1] | 30.5% (18/59) [20.3, 43.1] | 27.1% (16/59) [17.4, 39.6] |

seconds: {"shared-base": 90, "independent": 95, "chained": 87, "dense": 69, "independent avg router": 0, "independent learned-avg router": 4, "chained avg router": 0, "chained learned-avg router": 4, "shared-base avg router": 0, "shared-base learned-avg router": 4, "evaluate": 21}

What it shows, at this size:

- **TiMoE does not beat the leak-free dense series.** From 2015 on the dense series has
  the lowest point-in-time perplexity in every year (2024: 35.2, against 35.3 for chained
  learned-avg and 854-867 for independent experts). The shared-base rows have the lowest
  *mean* (341-350 against 588) only because of 2013: the base puts 11 more steps on the
  first year before any expert reads it (2013: 498 against 5,444), which is where a mean
  of perplexities is dominated; every year from 2015 on is worse than the series.
- **Chaining is the step that matters.** Independent experts restart from random weights
  every slice and stay near 640-1,400 in every year; chained experts carry what came
  before and fall to 35-74 by 2020-2024, level with the series by 2024, which is itself
  one chain without restarts. What separates them from it is the per-slice warmup and
  the mixture's average over older experts.
- **QA is at chance for every point-in-time row** (22-26% on 4 choices, intervals of
  +-6 points overlapping), and no future-error or stale-answer rate differs from another
  outside noise: 187 questions and 8 steps a year cannot separate these models. A larger
  size (`--size demo`, the demo's 40 steps a year on 200 documents) was not run.
"""


PAPER_COMPARISON = """\
## Against the paper's released code

Measured against epfml/TiMoE at commit 2de335f (the code released with arXiv
2508.08827), on the same shapes, the two interleaved in one process on a 2-core CPU,
fp32. These figures are not produced by `python -m benchmarks` (that needs the paper's
code checked out); they were measured once with this method.

| workload | paper code | timoe |
|---|---|---|
| mixture evaluation as of 2016, six 2x128 experts, batch 8 x 256 | 229 tok/s, 11.0 GB peak | 2,949 tok/s (12.8x), 0.42 GB |
| target-only evaluation, batch 2 x 1024 | 104 tok/s | 3,967 tok/s (38x) |
| learned-avg router step, batch 8 x 128 | 103 tok/s, 6.3 GB peak | 3,489 tok/s (35x), 37 MB |
| greedy generation, 256-token prompt + 64 new | 0.91 tok/s | 171 tok/s (188x) |
| data preparation, 20k docs, 5.3 M tokens | 0.90 M tok/s, 4 bytes/token | 3.12 M tok/s (3.5x), 2 bytes/token |
| expert train step, 4x256, batch 8 x 256 | 1,153 tok/s | 1,161 tok/s (same math, parity) |

At 2016 the paper's code runs all six experts and its off-by-one admits three. Its
mixture sums to 2.0 per position because masked experts are zeroed rather than
excluded."""


def fmt_value(value: Any, unit: str) -> str:
    """A figure's value for a table cell, in its unit."""
    if value is None:
        return "-"
    if unit == "fraction":
        return f"{value * 100:.1f}%"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "FLOP/s":
        return f"{value / 1e12:.1f} TFLOP/s" if value >= 1e12 else f"{value / 1e9:.1f} GFLOP/s"
    if unit == "bytes/s":
        return f"{value / 1e9:.1f} GB/s"
    if unit == "bytes":
        return f"{value / 1e6:.1f} MB"
    if unit == "tokens/s":
        return f"{value:,.0f} tokens/s" if value >= 100 else f"{value:.1f} tokens/s"
    if isinstance(value, float):
        return f"{value:,.2f} {unit}"
    return f"{value:,} {unit}"


def fmt_fraction(name: str, value: float) -> str:
    """Overheads carry a sign (a negative overhead is noise or a real gain)."""
    return f"{value * 100:+.1f}%" if "overhead" in name else f"{value * 100:.1f}%"


def cell(name: str, fig: Mapping[str, Any]) -> str:
    if fig.get("unit") == "fraction" and fig.get("value") is not None:
        return fmt_fraction(name, fig["value"])
    return fmt_value(fig.get("value"), fig.get("unit", ""))


def target_cell(name: str, fig: Mapping[str, Any]) -> str:
    target = fig.get("target")
    if target is None:
        return ""
    shown = fmt_fraction(name, target) if fig.get("unit") == "fraction" else (
        f"{target:g}x" if fig.get("unit") == "x" else f"{target:g}")
    return f"{fig['goal']} {shown}"


def met_cell(fig: Mapping[str, Any]) -> str:
    ok = target_met(fig)
    return "" if ok is None else ("met" if ok else "**missed**")


def table(figures: Mapping[str, Mapping[str, Any]], names: list[str]) -> list[str]:
    lines = ["| figure | value | measured against | target | |", "| --- | ---: | --- | --- | --- |"]
    for n in names:
        f = figures[n]
        vs = f"`{f['ratio_to']}`" if f.get("ratio_to") else ""
        lines.append(f"| `{n}` | {cell(n, f)} | {vs} | {target_cell(n, f)} | {met_cell(f)} |")
    return lines


def render(data: Mapping[str, Any]) -> str:
    """The whole page for one JSON file of the suite."""
    run = data.get("_run")
    if run is None:
        raise ValueError("no `_run` record: write the file with `python -m benchmarks --json`")
    figures = {k: v for k, v in data.items() if k != "_run"}
    groups: Mapping[str, Mapping[str, Any]] = run.get("groups", {})
    m = run.get("machine", {})
    load_b, load_a = run.get("loadavg_before", []), run.get("loadavg_after", [])
    out = ["# Benchmarks", "",
           ("<!-- Generated by `python -m benchmarks.report` from the JSON of "
           "`python -m benchmarks`: do not edit by hand. -->"), "",
           INTRO.replace("{regenerate}", REGENERATE), "", "## This run", "",
           "| | |", "| --- | --- |",
           f"| command | `{run.get('command')}` |",
           f"| date | {run.get('date')} |",
           (f"| CPU | {m.get('cpu')}, {m.get('cores')} cores (torch threads: "
           f"{m.get('torch_threads')}) |"),
           f"| GPU | {m.get('cuda_device') or 'none'} |",
           f"| software | torch {m.get('torch')}, Python {m.get('python')}, {m.get('platform')} |",
           f"| revision | {run.get('git') or 'unknown'} |",
           (f"| load average (1, 5, 15 min) | before {', '.join(map(str, load_b))}; after "
           f"{', '.join(map(str, load_a))} |"),
           f"| duration | {run.get('seconds')} s |", ""]
    if load_b and load_b[0] > 0.5 * (m.get("cores") or 1):
        out += [(f"The machine was shared while this ran (load average {load_b[0]} on "
                f"{m.get('cores')} cores): absolute rates are low and noisy; the ratios, "
                "taken within rounds, are the figures to read."), ""]

    targeted = [n for n, f in figures.items() if f.get("target") is not None]
    missed = [n for n in targeted if target_met(figures[n]) is False]
    out += ["## Targets", "",
            f"{len(targeted) - len(missed)} of {len(targeted)} figures with a target meet it.",
            ""]
    if targeted:
        out += table(figures, targeted) + [""]

    out += [PAPER_COMPARISON, "", EQUAL_COMPUTE, ""]

    for name in GROUPS:
        entry = groups.get(name)
        out += [f"## {name}: {GROUPS[name][0]}", "", METHOD[name], ""]
        if entry is None:
            out += ["Not run in this file (the run used `--only`).", ""]
            continue
        if entry["status"] != "ran":
            out += [f"**Not run here: {entry['status']}** ({entry.get('reason')}).", ""]
            if name == "gpu":
                out += [("No GPU was available for this run, so no GPU figure has been "
                        "measured: not the training MFU with and without compile, one "
                        "expert's training tokens/s, the mixture at the paper's size, nor "
                        "decode against a GPU's bandwidth. Run `python -m benchmarks "
                        "--only gpu` on a CUDA machine."), ""]
            continue
        if entry.get("command"):  # a group measured on its own, merged into this file
            out += [f"Measured on its own: `{entry['command']}`, {entry.get('date')}.", ""]
        if entry.get("note"):
            out += [entry["note"], ""]
        names = [n for n in entry["figures"] if n in figures]
        if entry.get("command"):  # a group measured in a run of its own, merged in
            out += [f"Measured in a run of its own: `{entry['command']}`, {entry.get('date')}"
                    f" (load average before {entry.get('loadavg_before')}).", ""]
        cpu = entry.get("cpu_seconds")
        out += [f"{len(names)} figures, {entry.get('seconds')} s"
                + (f" ({cpu} s of CPU)." if cpu is not None else "."), ""]
        out += table(figures, names) + [""]
        notes = [MISSED_NOTES[n] for n in names if n in missed and n in MISSED_NOTES]
        for note in dict.fromkeys(notes):  # once each, in order
            out += [note, ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, nargs="?", default=DEFAULT_JSON,
                    help="the file written by `python -m benchmarks --json` "
                         "(default docs/benchmarks.json)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default docs/benchmarks.md")
    args = ap.parse_args(argv)
    data = json.loads(args.json.read_text(encoding="utf-8"))
    args.out.write_text(render(data), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
