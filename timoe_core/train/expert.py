"""`train_expert(cfg)`: the GPT expert of one time slice, or a dense model on all slices.

`--year Y` trains the expert of the data's slice containing Y on that slice's train
windows only; `--all-years` trains one dense model on every slice (run.json kind
"dense", slice label covering the whole range); `--base --until DATE` a base model on
every year that ends on or before DATE (kind "base"), to start experts from.
`--init-from SRC` starts the weights from SRC (`train.init_from`): every artefact of
the run records it (run.json `init_from`) and has a data cutoff of at least SRC's.
Everything about the input is checked before anything is written (`plan_expert_run`,
train/expert_plan.py); then the run dir is prepared once (`prepare_run_dir`) and the
workers train the task (train/expert_task.py; a staged run's stages and snapshots:
train/expert_stages.py), all by the shared job driver (`timoe_core.train.job`; this
module's `EXPERT_JOB`).

Resume rules (the run dir is RUN_DIR = --out):
- RUN_DIR holds a run with a checkpoint: the run resumes from it, unless the new flags
  change what the run is (model shape, slice, data, seed): exit 2 naming the fields.
  Budget and optimiser flags (--max-steps, --lr, ...) may change: that extends a run.
- `--no-resume` on an existing run is refused; `--overwrite` starts over (it clears
  this toolkit's files from RUN_DIR, nothing else).
- A corrupt latest checkpoint is an error naming the file, never a silent restart.
"""

from __future__ import annotations

from pathlib import Path

from timoe_core.config import TrainExpertConfig
from timoe_core.data.manifest import data_read_up_to_each
from timoe_core.data.windows import TokenWindows
from timoe_core.model.gpt import GPT
from timoe_core.train import rng
from timoe_core.train.distributed import DistEnv
from timoe_core.train.expert_plan import ExpertPlan, plan_expert_run, prepare_run_dir
from timoe_core.train.expert_task import ExpertBatch, ExpertTask, StagedExpertTask
from timoe_core.train.init_from import load_init_weights
from timoe_core.train.job import Stages, run_job, single_stage
from timoe_core.train.loop import LoopResult
from timoe_core.train.task import TrainTask


class ExpertJob:
    """train-expert as a `TrainingJob` (see job.py)."""

    ref = "timoe_core.train.expert:EXPERT_JOB"
    config_model = TrainExpertConfig

    def plan(
        self, cfg: TrainExpertConfig, world_size: int | None = None, check_run_dir: bool = True,
        restart: bool = False,
    ) -> ExpertPlan:
        return plan_expert_run(cfg, world_size, check_run_dir, restart)

    def prepare_run_dir(self, plan: ExpertPlan) -> None:
        prepare_run_dir(plan)

    def build_task(self, plan: ExpertPlan, env: DistEnv) -> ExpertTask:
        cfg = plan.cfg
        rng.seed_all(cfg.seed)
        model = GPT(plan.model_config)
        if plan.init is not None:  # a resumed run's checkpoint replaces these weights
            load_init_weights(model, plan.init)
        years, seq_len = plan.time_slice.years, plan.model_config.block_size
        val = TokenWindows(plan.data_dir, "val", years, seq_len, plan.manifest)
        train = TokenWindows(plan.data_dir, "train", years, seq_len, plan.manifest)
        eval_windows = cfg.eval_batches * cfg.batch_size
        task: ExpertTask
        if plan.stages:
            snapshot_at = plan.snapshot_at
            data_files = data_read_up_to_each(plan.data_dir, plan.manifest, years,
                                              [s.end for s in snapshot_at])
            task = StagedExpertTask(model, train, val if len(val) else None, cfg.seed,
                                    eval_windows, plan.stages, plan.run_dir, plan.run_info,
                                    data_files, cfg, snapshot_at)
        else:
            task = ExpertTask(model, train, val if len(val) else None, seed=cfg.seed,
                              eval_windows=eval_windows)
        if plan.init is not None and plan.init.record.optimizer:
            task.start_optimizer_state = plan.init.optimizer_state()
        return task

    def wandb_config(self, plan: ExpertPlan, env: DistEnv) -> dict[str, object]:
        return {
            "slice": plan.time_slice.label,
            "kind": plan.run_info.kind,
            "model": plan.model_config.model_dump(),
            "world_size": env.world_size,
            "total_steps": plan.total_steps,
        }

    def finish(self, plan: ExpertPlan, task: TrainTask[ExpertBatch, ExpertBatch],
               result: LoopResult, env: DistEnv) -> None:
        pass

    def stages(self, plan: ExpertPlan, env: DistEnv) -> Stages:
        return single_stage(self, plan, env)


EXPERT_JOB = ExpertJob()


def train_expert(cfg: TrainExpertConfig) -> Path:
    """Train the expert (or dense model) that `cfg` describes; returns its run dir.

    Raises TimoeError for bad input (nothing written), TrainingInterrupted when stopped
    by Ctrl-C/SIGTERM after writing a checkpoint (rerun to resume).
    """
    return run_job(EXPERT_JOB, cfg)
