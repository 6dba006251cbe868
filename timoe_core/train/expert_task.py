"""The tasks of train-expert for the shared loop: next-token prediction on one slice's
windows (`ExpertTask`), and the staged run's (`StagedExpertTask`: the stages' data
order, and a snapshot at each stage end, averaged or through a decay branch)."""

from __future__ import annotations

import functools
from datetime import date
from pathlib import Path

import numpy as np
import torch

from timoe_core.config import TrainExpertConfig, TrainingConfig
from timoe_core.data.windows import TokenWindows
from timoe_core.io import atomic_write_json, sha256_file
from timoe_core.model.gpt import GPT
from timoe_core.model.run_info import SNAPSHOT_INFO_FILENAME, RunInfo, write_run_info
from timoe_core.model.weights import load_weights_into, save_model_weights, save_weights_state
from timoe_core.train.averaging import WeightAverage
from timoe_core.train.expert_stages import Stage, snapshot_info, snapshot_relpath
from timoe_core.train.orders import DataPosition, ShuffledOrder
from timoe_core.train.schedule import StagedSchedule
from timoe_core.train.task import Branch, TaskState, TrainTask

# A batch of train-expert: the windows' inputs and their next tokens.
ExpertBatch = tuple[torch.Tensor, torch.Tensor]


class ExpertTask(TrainTask[ExpertBatch, ExpertBatch]):
    """Next-token prediction on one slice's windows (TrainTask protocol, see task.py)."""

    name = "expert"
    model: GPT

    def __init__(
        self,
        model: GPT,
        train: TokenWindows,
        val: TokenWindows | None,
        seed: int,
        eval_windows: int,
    ) -> None:
        self.model = model
        self.train = train
        self.val = val
        self.tokens_per_window = train.seq_len
        self.order = ShuffledOrder(len(train), lambda epoch: train.shuffled_indices(seed, epoch))
        self._eval_windows = eval_windows

    @staticmethod
    def _inputs_targets(
        rows: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if device.type == "cuda":
            rows = rows.pin_memory().to(device, non_blocking=True)
        return rows[:, :-1], rows[:, 1:]

    def batch(self, indices: np.ndarray, device: torch.device) -> ExpertBatch:
        return self._inputs_targets(self.train.batch(indices)[0], device)

    def eval_batch(self, indices: np.ndarray, device: torch.device) -> ExpertBatch:
        assert self.val is not None
        return self._inputs_targets(self.val.batch(indices)[0], device)

    def loss(self, model: torch.nn.Module, batch: ExpertBatch
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        _, loss = model(x, y)
        return loss, {}

    def eval_loss(self, model: torch.nn.Module, batch: ExpertBatch) -> torch.Tensor:
        return self.loss(model, batch)[0]

    def eval_indices(self) -> np.ndarray | None:
        """Up to eval_windows validation windows spread evenly over the slice's years."""
        if self.val is None or len(self.val) == 0:
            return None
        n = min(len(self.val), self._eval_windows)
        return np.unique(np.linspace(0, len(self.val) - 1, n).round().astype(np.int64))

    def save_weights(self, directory: Path) -> None:
        save_model_weights(directory, self.model)

    def load_weights(self, directory: Path) -> None:
        load_weights_into(self.model, directory)


class StageStream:
    """The data order of one stage: permutations of the stage's windows (the first
    `windows` of the run), seeded by (seed, stage end, epoch), cut into steps. It knows
    nothing of later periods: a run that stops at this stage reads the same windows."""

    def __init__(self, stage: Stage, seed: int) -> None:
        self.stage, self.seed = stage, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def block(self, j: int, n: int) -> np.ndarray:
        per_epoch = self.stage.windows // n
        epoch, b = divmod(j, per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, self.stage.end.toordinal(), epoch])
            self._perm = (epoch, rng.permutation(self.stage.windows))
        return self._perm[1][b * n : (b + 1) * n]


class StagedOrder:
    """Main step s reads from the stream of the stage holding s; the last stage's stream
    goes on through the final decay (DataOrder protocol, see orders.py)."""

    def __init__(self, stages: list[Stage], seed: int) -> None:
        self.stages = stages
        self.streams = [StageStream(s, seed) for s in stages]
        self.starts = np.cumsum([0] + [s.steps for s in stages])

    def take(self, position: DataPosition, n: int) -> tuple[np.ndarray, DataPosition]:
        step = position.offset // n
        k = min(int(np.searchsorted(self.starts, step, side="right")) - 1, len(self.stages) - 1)
        out = self.streams[k].block(step - int(self.starts[k]), n)
        return out, DataPosition(0, position.offset + n)


class StagedExpertTask(ExpertTask):
    """An expert trained in chronological stages, a snapshot at the end of each but the
    last: the running average of the main line's weights (`--snapshot-kind average`,
    train/averaging.py) or a decay branch (`decay`, task.Branch); see
    docs/architecture.md."""

    def __init__(self, model: GPT, train: TokenWindows, val: TokenWindows | None, seed: int,
                 eval_windows: int, stages: list[Stage], run_dir: Path, info: RunInfo,
                 data_files: dict[date, dict[str, str]], cfg: TrainExpertConfig,
                 snapshot_at: list[Stage]) -> None:
        super().__init__(model, train, val, seed, eval_windows)
        self.stages, self.run_dir, self.info, self.cfg = stages, run_dir, info, cfg
        self.data_files = data_files  # stage end -> what its snapshot read (run.json)
        self.snapshot_at = snapshot_at  # the stages that save a snapshot (snapshot_stages)
        self.order = StagedOrder(stages, seed)
        self.schedule: StagedSchedule | None = None
        ends = np.cumsum([s.steps for s in stages])
        # main step count at a stage end -> the stage whose snapshot is saved there
        self.snapshot_ends = {int(ends[stages.index(s)]): s for s in snapshot_at}
        self.main_steps = int(ends[-1])
        self.total_steps = self.main_steps + stages[-1].decay_steps
        self.average = (WeightAverage(model, cfg.snapshot_average_fraction)
                        if cfg.snapshot_kind == "average" else None)

    def own_schedule(self, cfg: TrainingConfig, total_steps: int) -> StagedSchedule:
        first = self.stages[0].steps
        self.schedule = StagedSchedule(
            peak_lr=cfg.lr,
            warmup_steps=int(cfg.warmup_fraction * first + 0.5),
            main_steps=sum(s.steps for s in self.stages),
            decay_steps=self.stages[-1].decay_steps,
            min_lr_ratio=cfg.min_lr_ratio,
            decay_shape=cfg.decay_shape,
        )
        return self.schedule

    def after_step(self, step: int, is_main: bool) -> None:
        average = self.average
        if average is not None:
            if step > self.main_steps:  # the final decay: not averaged
                return
            average.update(step)
            stage = self.snapshot_ends.get(step)
        else:  # a decay snapshot of the last stage (see snapshot_stages): the final weights
            stage = self.snapshot_ends.get(self.main_steps) if step == self.total_steps else None
        if stage is not None and is_main:
            folder = self.run_dir / snapshot_relpath(stage.cutoff)
            if not (folder / SNAPSHOT_INFO_FILENAME).is_file():
                weights = (average.averaged_state(self.model) if average is not None
                           else self.model.state_dict())
                self.save_snapshot(folder, stage, weights)

    def state_dict(self) -> TaskState | None:
        return None if self.average is None else {"average": self.average.state_dict()}

    def load_state_dict(self, state: TaskState) -> None:
        average = state.get("average")
        if self.average is not None and isinstance(average, dict):
            self.average.load_state_dict(average)

    def branch_after(self, step: int) -> Branch | None:
        if self.average is not None:  # averaged snapshots need no branch
            return None
        order = self.order
        assert isinstance(order, StagedOrder)
        for k, stage in enumerate(self.stages[:-1]):
            if int(order.starts[k + 1]) == step:
                if stage not in self.snapshot_at:
                    return None  # no branch: the main run goes on as it would after one
                stream, schedule = order.streams[k], self.schedule
                assert schedule is not None
                folder = self.run_dir / snapshot_relpath(stage.cutoff)
                return Branch(  # the branch reads its stage's stream on from the stage end
                    steps=stage.decay_steps,
                    take=functools.partial(_block_from, stream, stage.steps),
                    lr=functools.partial(_branch_lr, schedule, stage.decay_steps),
                    save=functools.partial(self._save_final_snapshot, folder, stage),
                    done=(folder / SNAPSHOT_INFO_FILENAME).is_file(),
                )
        return None

    def _save_final_snapshot(self, folder: Path, stage: Stage) -> None:
        self.save_snapshot(folder, stage, self.model.state_dict())

    def save_snapshot(self, folder: Path, stage: Stage, weights: dict[str, torch.Tensor]
                      ) -> None:
        """The snapshot's weights (as --snapshot-dtype) and run.json (the run's, with the
        snapshot's cutoff, raised to --init-from's if that is later), then snapshot.json
        (last: a folder holding it is whole)."""
        path = save_weights_state(folder, weights, self.cfg.snapshot_dtype)
        info = self.info.at_cutoff(stage.cutoff, self.data_files[stage.end])
        write_run_info(folder, info)
        meta = snapshot_info(self.cfg, stage, sha256_file(path), info.cutoff)
        atomic_write_json(folder / SNAPSHOT_INFO_FILENAME, meta.model_dump(exclude_none=True))



def _block_from(stream: StageStream, start: int, i: int, n: int) -> np.ndarray:
    """Branch step i's windows: the stage's stream read on from step `start`."""
    return stream.block(start + i, n)


def _branch_lr(schedule: StagedSchedule, decay_steps: int, i: int) -> float:
    return schedule.branch_lr(i, decay_steps)
