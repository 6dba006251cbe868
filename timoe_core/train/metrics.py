"""What a training run reports: rich progress, metrics.jsonl, wandb. Rank 0 only.

metrics.jsonl (always written, one JSON object a line, appended and flushed):

    {"type": "train", "step": 10, "loss": 7.91, "lr": 0.001, "grad_norm": 1.2,
     "tokens": 40960, "tokens_per_s": 51234.5, "elapsed": 0.8}
    {"type": "eval", "step": 50, "eval_loss": 6.2, "eval_ppl": 492.7, "tokens": ..., "elapsed": ...}
    {"type": "runtime", "step": 0, "device": "cuda:0", "amp": true, "compile": true,
     "tf32": true, "fused_adamw": true, "pin_memory": true}     (each invocation's first)

`elapsed` is training wall time in seconds summed over all invocations of the run. On
resume the lines after the checkpoint's step (written by the interrupted invocation)
are dropped, so the file reads as one uninterrupted run.

wandb (--wandb offline|online; disabled by default and then never imported) never
prompts: online needs credentials already set up (WANDB_API_KEY or `wandb login`),
checked before training starts. The run id is kept in RUN_DIR/wandb_run_id so a resumed
run continues the same wandb run.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from timoe_core.errors import TimoeError
from timoe_core.io import atomic_write_text, open_for_append
from timoe_core.model.run_info import (  # metrics.jsonl is read there, below train
    METRICS_FILENAME,
    read_metrics,
)

if TYPE_CHECKING:  # imported when wandb is used (it is slow to import)
    import wandb

# A value of a metrics.jsonl record.
MetricValue = str | int | float | bool | None

WANDB_ID_FILENAME = "wandb_run_id"


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep only records up to `step` (what the checkpoint being resumed has seen)."""
    path = Path(run_dir) / METRICS_FILENAME
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


WandbMode = Literal["disabled", "offline", "online"]

def check_wandb_mode(mode: str) -> None:
    """--wandb online without credentials would prompt: refuse it before training."""
    if mode != "online":
        return
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:
        if netrc.netrc().authenticators(host):
            return
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    raise TimoeError(
        "--wandb online needs W&B credentials and would otherwise prompt: set WANDB_API_KEY "
        "or run `wandb login` first, or use --wandb offline"
    )


def wandb_run_id(run_dir: Path, create: bool) -> str | None:
    path = Path(run_dir) / WANDB_ID_FILENAME
    if path.is_file():
        return path.read_text(encoding="utf-8").strip() or None
    if not create:
        return None
    run_id = uuid.uuid4().hex[:12]
    atomic_write_text(path, run_id + "\n")
    return run_id


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


class MetricsLogger:
    """Rank 0's reporter; on other ranks every method does nothing."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        start_step: int,
        total_steps: int,
        title: str,
        wandb_mode: WandbMode = "disabled",
        wandb_project: str = "timoe",
        wandb_config: dict[str, object] | None = None,
        console: Console | None = None,
    ) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.console = console or Console(soft_wrap=True, markup=False, emoji=False)  # log lines are never wrapped
        self._file = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._wandb: wandb.Run | None = None
        if not enabled:
            return
        # Held open for the run (closed in close()): one flushed line per record.
        self._file = open_for_append(self.run_dir / METRICS_FILENAME)
        if wandb_mode != "disabled":
            self._wandb = self._start_wandb(wandb_mode, wandb_project, wandb_config or {}, title)
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(bar_width=16),
                MofNCompleteColumn(),
                TextColumn(
                    "loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s  ETA"
                ),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task(
                title, total=total_steps, completed=start_step, loss="-", lr="-", tps="-"
            )
            self._progress.start()
        else:
            self.console.print(f"{title}: steps {start_step} -> {total_steps}", highlight=False)

    def _start_wandb(self, mode: WandbMode, project: str, config: dict[str, object], title: str
                     ) -> wandb.Run:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        run = wandb.init(
            project=project,
            id=wandb_run_id(self.run_dir, create=True),
            name=title,
            resume="allow",
            mode=mode,
            dir=str(self.run_dir),
            config=config,
            settings=wandb.Settings(silent=True, console="off", login_timeout=30),
        )
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
        return run

    def _write(self, record: Mapping[str, MetricValue]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            kind = record["type"]
            self._wandb.log(
                {"step": record["step"]}
                | {f"{kind}/{k}": v for k, v in record.items() if k not in ("type", "step")}
            )

    def progress(self, step: int) -> None:
        """Advance the live bar (cheap: no device sync)."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=step)

    def train(self, record: dict[str, float | None]) -> None:
        """A train record: step, loss, lr, grad_norm, tokens, tokens_per_s, elapsed and
        the task's metrics."""
        if not self.enabled:
            return
        self._write({"type": "train", **record})
        loss, lr, tps = (
            _fmt(record["loss"], ".4f"),
            _fmt(record["lr"], ".2e"),
            _fmt(record["tokens_per_s"], ",.0f"),
        )
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=record["step"], loss=loss, lr=lr, tps=tps)
        else:
            self.console.print(
                f"step {record['step']}/{self.total_steps}  loss {loss}  lr {lr}  {tps} tok/s  "
                f"{record['elapsed']:.1f}s",
                highlight=False,
            )

    def eval(self, record: dict[str, float]) -> None:
        """An eval record: step, eval_loss, eval_ppl, tokens, elapsed."""
        if not self.enabled:
            return
        self._write({"type": "eval", **record})
        text = f"eval at step {record['step']}: loss {record['eval_loss']:.4f}"
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            self.console.print(text, highlight=False)

    def runtime(self, step: int, choices: dict[str, str | bool], total_steps: int | None = None
                ) -> None:
        """How this invocation trains (device, amp, compile, ...) and the step the run
        ends at (`run_progress` reads it): a record and one line."""
        if not self.enabled:
            return
        total = {} if total_steps is None else {"total_steps": total_steps}
        self._write({"type": "runtime", "step": step, **total, **choices})
        self.message("runtime: " + ", ".join(f"{k} {v}" for k, v in choices.items()))

    def message(self, text: str) -> None:
        if self.enabled:
            (self._progress.console if self._progress else self.console).print(
                text, highlight=False
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
