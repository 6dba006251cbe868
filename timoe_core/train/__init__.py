"""Training: the shared loop and the commands built on it.

distributed   the workers' environment, process groups, Ctrl-C
launch        launching workers (PyTorch's elastic launcher), the run dir's lock
schedule      warmup-stable-decay learning rate (state saved and loaded on resume)
optim         AdamW with decay on matrices only
orders        data orders: which windows each step reads (shuffled, grouped)
task          the TrainTask protocol (generic in its batch types), decay branches
trainer       one optimizer step (Trainer), runtime choices, the held-out evaluation
trainer_state the trainer state a checkpoint holds: assembled, and restored on resume
loop          `run_training`: the shared loop of every training command
state         checkpoints: layout, atomic writes, resume; the trainer state's shape
rng           every RNG a run draws from: seeded, captured and restored
run_dir       the one run-dir decision (new / resume / overwrite), opening a run dir
metrics       rich progress, metrics.jsonl, wandb
job           the one training-job driver: plan, resume check, task, finish (`run_job`)
expert        `train_expert(cfg)`: `timoe train-expert` (EXPERT_JOB)
expert_plan   train-expert's plan: inputs checked, the run derived, the run dir decided
expert_resume what a rerun of train-expert may not change
expert_stages a staged expert's stages and snapshots
expert_task   train-expert's tasks (ExpertTask, StagedExpertTask) and staged data order
mixture_run   the job of every mixture strategy in one run (MixtureJob): plan, bundle
mixture_record mixture_run.json, the conflicts a rerun is held to, the run-dir decision
mixture_task  MixtureTask, the task every mixture recipe extends
logprob_cache frozen experts' target log-probs on disk, reused across router epochs
staging       StagedJob: point-in-time mixtures, one stage per data cutoff
staging_plan  a staged run's checks, stage cutoffs and mixture_run.json
stage         Stage: what a recipe's `stage_task` receives
recipe        the recipe protocol (MixtureRecipe, BundleRecipe) the strategies implement

The strategies' recipes, and `train_router` / `coadapt`, are in timoe_core/recipes/,
the layer above this one.
"""


from timoe_core.train.distributed import TrainingInterrupted, WorkersFailed
from timoe_core.train.expert import train_expert
from timoe_core.train.loop import LoopResult, run_training
from timoe_core.train.orders import DataPosition, GroupedOrder, ShuffledOrder
from timoe_core.train.schedule import WSDSchedule
from timoe_core.train.task import TrainTask
from timoe_core.train.trainer import Trainer

__all__ = [
    "DataPosition",
    "GroupedOrder",
    "LoopResult",
    "ShuffledOrder",
    "TrainTask",
    "Trainer",
    "TrainingInterrupted",
    "WSDSchedule",
    "WorkersFailed",
    "run_training",
    "train_expert",
]
