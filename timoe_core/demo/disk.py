"""What the demo will hold on disk, against what is free where it writes."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from timoe_core.config import DemoConfig, TrainExpertConfig
from timoe_core.demo.settings import DemoSettings, demo_settings
from timoe_core.errors import TimoeError
from timoe_core.timeslices import TimeSlicing, months_per_period


@dataclass(frozen=True)
class DiskPlan:
    """What the demo will hold on disk, against what is free where it writes."""

    need: int  # bytes the whole demo holds at its peak (estimate)
    written: int  # bytes already under --out (a resumed demo)
    free: int  # bytes free on --out's file system

    @property
    def missing(self) -> int:
        return max(0, self.need - self.written - self.free)

    def line(self, out: Path) -> str:
        gb = 1e9
        done = f", {self.written / gb:.1f} GB of it already written" if self.written else ""
        return (f"disk: the demo needs about {self.need / gb:.1f} GB under {out}{done}; "
                f"{self.free / gb:.1f} GB free")


def _weight_bytes(s: DemoSettings) -> tuple[int, int, int]:
    """(bytes of one expert's weights, of its token embedding, of one router's) at the
    demo's sizes in float32, counted on the meta device (nothing allocated)."""
    import torch

    from timoe_core.model.gpt import GPT, pad_vocab, preset_config
    from timoe_core.model.router import Router, RouterConfig
    from timoe_core.tokenizer import get_tokenizer

    vocab = get_tokenizer().vocab_size
    labels = [sl.label for sl in TimeSlicing().slices]
    with torch.device("meta"):
        gpt = GPT(preset_config(TrainExpertConfig.model_fields["preset"].default,
                                vocab_size=pad_vocab(vocab), n_layer=s.n_layer,
                                n_head=s.n_head, n_embd=s.n_embd, block_size=s.seq_len))
        router = Router(RouterConfig(slice_labels=labels, vocab_size=vocab))

    def size(m: torch.nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in m.parameters())
    return size(gpt), gpt.wte.weight.numel() * gpt.wte.weight.element_size(), size(router)


def disk_needed(s: DemoSettings, keep_checkpoints: bool) -> int:
    """Bytes the demo holds at its peak: every artefact it keeps, plus the trainer
    checkpoints of the run in progress (two kept, each the weights and AdamW's two
    moments), or of every run with `keep_checkpoints`. Measured against `du` in
    tests/test_demo.py."""
    w, embedding, r = _weight_bytes(s)
    stored = 2 if s.snapshot_dtype == "bfloat16" else 1  # float32 bytes per stored byte
    snapshot = w // stored  # an expert's or the dense run's snapshot
    # an adapted expert: with --adapted-weights blocks a delta without the token embedding
    adapted = (w - embedding if s.adapted_weights == "blocks" else w) // stored
    slicing = TimeSlicing()
    n_slices = len(slicing.slices)
    n_years = slicing.end_year - slicing.start_year + 1
    per_year = 12 // months_per_period(s.cutoff_every)
    stages = n_years * per_year  # at most one router stage per period (every cutoff)
    kept = (n_slices * (w + (slicing.slice_years * per_year - 1) * snapshot)  # each expert:
            # its final weights and a snapshot at every earlier period end
            + w + (stages - 1) * snapshot  # the dense run: the same over every year
            # learned-avg: a router per stage + the latest (whole: deltas are smaller)
            + (stages + 1) * (r // stored)
            + (stages + 1) * (r // stored) + stages * adapted  # coadapt: + adapted experts
            + (64 << 20))  # the data, reports, plots, metrics (a few MB)
    checkpoint = 2 * 3  # two checkpoints of weights + two AdamW moments
    if not keep_checkpoints:
        return kept + checkpoint * (w + r)  # the largest run in progress: a coadapt stage
    # the demo's router stages are a few steps each: one checkpoint at their end
    return (kept + checkpoint * (n_slices + 1) * w  # every expert and the dense run
            + stages * 3 * r  # learned-avg stages
            + stages * 3 * (w + r))  # coadapt stages


def _bytes_under(path: Path) -> int:
    """Bytes of the files under `path`, a file hard-linked twice counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in path.rglob("*") if path.is_dir() else []:
        try:
            st = p.lstat()
        except OSError:
            continue
        if p.is_file() and not p.is_symlink() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def disk_plan(cfg: DemoConfig) -> DiskPlan:
    """The demo's disk estimate against the free space of --out's file system."""
    where = cfg.out.resolve()
    while not where.exists():  # the nearest folder that exists: --out's file system
        where = where.parent
    return DiskPlan(need=disk_needed(demo_settings(cfg), cfg.keep_checkpoints),
                    written=_bytes_under(cfg.out), free=shutil.disk_usage(where).free)


def check_disk(cfg: DemoConfig) -> None:
    """Refuse to start when the free space is clearly not enough (nothing written)."""
    plan = disk_plan(cfg)
    if plan.missing:
        raise TimoeError(
            f"{plan.line(cfg.out)}: {plan.missing / 1e9:.1f} GB short; free disk space or give "
            "another --out"
        )
