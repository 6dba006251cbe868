"""The stages and snapshots of a staged train-expert run: one stage per period end
(--cutoff-every) that brings new training windows, each with its own budget, and the
snapshots saved at their ends (which stages make one, what snapshot.json records, where
it is in the run dir)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from timoe_core.config import TrainExpertConfig
from timoe_core.data.windows import TokenWindows
from timoe_core.errors import TimoeError
from timoe_core.model.run_info import SNAPSHOTS_DIRNAME, SnapshotInfo
from timoe_core.timeslices import TimeSlice, period_ends
from timoe_core.train.init_from import InitSource
from timoe_core.train.schedule import stage_decay_steps


@dataclass(frozen=True)
class Stage:
    """One chronological stage of a staged run: the period ending `end` (its cutoff),
    reading the windows dated on or before it (the first `windows` of the run's
    TokenWindows, which are in date order), `steps` main steps and a decay of
    `decay_steps`."""

    end: date
    windows: int
    steps: int
    decay_steps: int

    @property
    def cutoff(self) -> date:
        return self.end





def snapshot_relpath(cutoff: date) -> str:
    return f"{SNAPSHOTS_DIRNAME}/{cutoff.isoformat()}"


def snapshot_stages(cfg: TrainExpertConfig, stages: list[Stage], time_slice: TimeSlice,
                    init: InitSource | None = None) -> list[Stage]:
    """The stages whose end gets a snapshot (earliest first): every stage but the last,
    whose end is the run's final weights (after its final decay).

    A float32 decay-branch snapshot at c is bitwise what a run that ends at c ends with (its
    final decay is the branch), so the last stage needs none. Any other snapshot is not
    (an average; weights stored as bfloat16): a run whose data ends inside its slice (the
    slice is open: a later stage may come) saves its last stage's snapshot too (a decay
    kind's is its final weights, stored as the snapshots are), and a query as of that
    cutoff uses it, not the final weights (`expert_pool.run_dir_artefacts`), as in a run
    that goes on. The final weights of a closed slice (data up to its end) answer as of
    its end.

    With --init-from, a snapshot's cutoff is raised to SRC's when that is later; one whose
    raised cutoff ties with the next artefact of the run (a later snapshot or the final
    weights) is not made: that one read more and would always be chosen over it."""
    exact = cfg.snapshot_kind == "decay" and cfg.snapshot_dtype == "float32"
    open_slice = not exact and bool(stages) and stages[-1].cutoff < time_slice.end
    made = list(stages) if open_slice else list(stages[:-1])
    if init is None or not made:
        return made
    cutoffs = [max(s.cutoff, init.cutoff) for s in made]
    if not open_slice:  # the final weights follow the last snapshot
        cutoffs.append(max(stages[-1].cutoff, init.cutoff))
    return [s for k, s in enumerate(made) if k + 1 >= len(cutoffs) or cutoffs[k] < cutoffs[k + 1]]


def snapshot_info(cfg: TrainExpertConfig, stage: Stage, sha256: str, cutoff: date
                  ) -> SnapshotInfo:
    """The snapshot.json of `stage`'s snapshot in a run of `cfg` (`cutoff`: the stage's,
    raised to --init-from's when that is later)."""
    average = cfg.snapshot_kind == "average"
    return SnapshotInfo(
        data_cutoff=cutoff.isoformat(), stage_end=stage.end.isoformat(),
        stage_steps=stage.steps, decay_steps=0 if average else stage.decay_steps, sha256=sha256,
        kind=cfg.snapshot_kind,
        average_fraction=cfg.snapshot_average_fraction if average else None,
        dtype=cfg.snapshot_dtype,
    )


def plan_stages(
    cfg: TrainExpertConfig, windows: TokenWindows, global_batch: int, time_slice: TimeSlice
) -> list[Stage]:
    """The chronological stages of a staged run: one per period (--cutoff-every) that
    brings new training windows, its cutoff the period's last day.

    Budgets are per stage, never global: stage k's steps come from --steps-per-stage or
    from the windows new in period k (one pass), so an artefact with cutoff k depends on
    data <= k and the config only."""
    if cfg.max_steps is not None or cfg.max_tokens is not None:
        flag = "--max-steps" if cfg.max_steps is not None else "--max-tokens"
        raise TimoeError(
            f"{flag} sets one budget for the whole run, but a staged run (--snapshots stages, "
            "the default) has a budget per year: give --steps-per-stage N, or --snapshots none "
            f"for one run of {flag}"
        )
    dates = windows.window_dates
    first, last = (d.astype(object) for d in (dates[0], dates[-1]))
    stages: list[Stage] = []
    for end in period_ends(first, last, cfg.cutoff_every):
        upto = windows.windows_up_to(end)
        # Windows no earlier stage trained on: a period with none adds nothing to learn,
        # and one whose windows up to its end are fewer than one step waits (no stage).
        new = upto - (stages[-1].windows if stages else 0)
        if new <= 0 or upto < global_batch:
            continue
        steps = cfg.steps_per_stage or max(1, new // global_batch)
        stages.append(Stage(end, upto, steps, stage_decay_steps(steps, cfg.decay_fraction)))
    if not stages:
        raise TimoeError(
            f"slice {time_slice.label} has {len(windows)} training windows of "
            f"{windows.seq_len + 1} tokens, fewer than one step's {global_batch}: lower "
            "--batch-size or --grad-accum, use a shorter --seq-len, or --snapshots none"
        )
    return stages
