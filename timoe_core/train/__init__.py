"""Training: the shared loop and the commands built on it.

distributed   workers (PyTorch's elastic launcher), process groups, Ctrl-C
schedule      warmup-stable-decay learning rate
optim         AdamW with decay on matrices only
loop          the TrainTask protocol and `run_training` (every training command)
state         checkpoints: layout, atomic writes, resume, RNG states
metrics       rich progress, metrics.jsonl, wandb
job           the one training-job driver: plan, resume check, task, finish (`run_job`)
expert        `train_expert(cfg)`: `timoe train-expert` (EXPERT_JOB)
mixture_run   the job of every mixture strategy (MixtureJob): inputs, run dir, bundle
logprob_cache frozen experts' target log-probs on disk, reused across router epochs
router        `train_router(cfg)`: `timoe train-router` (avg, learned-avg recipes)
coadapt       `coadapt(cfg)`: `timoe coadapt` (the coadapt recipe)

The strategies' training recipes (their tasks) are in timoe_core/strategies/.
"""

from timoe_core.train.coadapt import coadapt
from timoe_core.train.distributed import TrainingInterrupted, WorkersFailed
from timoe_core.train.expert import train_expert
from timoe_core.train.loop import (
    DataPosition,
    GroupedOrder,
    LoopResult,
    ShuffledOrder,
    Trainer,
    TrainTask,
    run_training,
)
from timoe_core.train.router import train_router
from timoe_core.train.schedule import WSDSchedule

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
    "coadapt",
    "run_training",
    "train_expert",
    "train_router",
]
