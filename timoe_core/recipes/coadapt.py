"""coadapt: the router and each batch's own slice expert, trained together.

Every optimizer step reads windows of one slice only (`GroupedOrder`, grouped by the
slice whose expert holds the window's year). That slice's expert is the step's active
expert: it runs with gradients and is updated, together with the router. Every other
expert eligible for the windows' dates runs under no_grad and gives only its
target-token log-probs (`TiMoE.forward(trainable=[active])`), in eval mode. The paper's
released code ran every expert under no_grad, so its "co-adaptation" never changed an
expert; tests/test_coadapt.py checks that the active expert's weights really change and
that every other expert's stay bitwise the same.

Workers: one step's global batch is one block of `GroupedOrder`, so all ranks read
windows of the same slice and train the same expert in every step; DDP reduces the
router's and that expert's gradients, and with find_unused_parameters the other
experts get no gradient at all (AdamW then leaves them, and their moments, untouched).
`batch` refuses a micro-batch that mixes slices, which would be a bug.

Start: the experts' own weights; the router is fresh (its output layer is zero, so the
mixture starts as avg) or, with --router BUNDLE, that bundle's router (e.g. a
learned-avg one, for a warm start). The learning rate defaults to 1e-4, below the
experts' pre-training rate, since the experts are already trained. With
`--adapted-weights blocks` the token embedding (tied to the output layer, most of a small
expert's weights) stays as it was, so a staged run stores each adapted expert as a delta
from its parent (model/weight_delta.py).

Output: OUT is a coadapt bundle; every adapted expert is stored inside it, in
OUT/experts/<label>/ (model.safetensors + run.json, checksummed in timoe.json); experts
that no window trained stay referenced from their run dirs.

Staged (policy point-in-time, the default): the recipe's `train` (train/recipe.py)
hands the run to train/staging.py: one stage per data cutoff, each adapting the
expert of the slice holding that year (a copy of its artefact usable then, stored as a
derived artefact with the stage's cutoff) through this task (`stage_task`);
`--policy inclusive` trains over every year at once (`make_task`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from timoe_core.config import AdaptedWeights, CoadaptConfig
from timoe_core.data.windows import TokenWindows
from timoe_core.model.bundle import (
    EMBEDDED_EXPERTS_DIR,
    load_router_weights,
    save_router_weights,
)
from timoe_core.model.mixture import MixtureOutput, TiMoE
from timoe_core.model.weighting import COADAPT
from timoe_core.model.weights import load_weights_into, save_model_weights
from timoe_core.train.distributed import DistEnv
from timoe_core.train.mixture_run import MixturePlan
from timoe_core.train.mixture_task import MixtureTask
from timoe_core.train.orders import GroupedOrder
from timoe_core.train.recipe import MixtureRecipe
from timoe_core.train.stage import Stage

# A coadapt micro-batch: inputs, targets, each row's year (its query date), and the label
# of the one slice expert the batch trains (every window of it is of that slice).
CoadaptBatch = tuple[torch.Tensor, torch.Tensor, list[int], str]


class CoadaptTask(MixtureTask[CoadaptBatch]):
    """Router + active expert per step (TrainTask protocol, see train/task.py)."""

    name = "coadapt"
    find_unused_parameters = True  # only one expert is used (and trained) per step

    def __init__(
        self,
        mix: TiMoE,
        train: TokenWindows,
        val: TokenWindows | None,
        seed: int,
        eval_windows: int,
        own_expert: dict[int, str],
        adapted_weights: AdaptedWeights,
    ) -> None:
        super().__init__(mix, train, val, eval_windows)
        # The slot of the expert that holds each window's year: the group of the window.
        slot = {label: k for k, label in enumerate(mix.labels)}
        self.window_slot = np.array([slot[own_expert[int(y)]] for y in train.window_years])
        self.adapted = sorted({own_expert[y] for y in train.years}, key=mix.labels.index)
        # Load every expert the data makes eligible now: DDP must see all parameters at
        # construction, and the adapted ones must be in the optimizer.
        for label in sorted({s.label for y in train.years for s in mix.eligible_experts(str(y))}):
            mix.expert(label)
        mix.set_trainable_experts(self.adapted)
        if adapted_weights == "blocks":  # the token embedding (and tied output) stays
            for label in self.adapted:
                mix.expert(label).wte.weight.requires_grad_(False)
        self.model = mix
        self.order = GroupedOrder(self.window_slot, seed)

    def mixture(self, model: torch.nn.Module) -> Callable[..., MixtureOutput]:
        return model  # the whole mixture (maybe wrapped by DDP) is the trained module

    def batch(self, indices: np.ndarray, device: torch.device) -> CoadaptBatch:
        slots = np.unique(self.window_slot[indices])
        if len(slots) != 1:
            raise RuntimeError(f"a coadapt micro-batch mixes the slices {slots.tolist()}")
        rows, years = self.train.batch(indices)
        rows = self._to_device(rows, device)
        return rows[:, :-1], rows[:, 1:], years.tolist(), self.mix.labels[int(slots[0])]

    def loss(self, model: torch.nn.Module, batch: CoadaptBatch
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y, years, active = batch
        for label in self.adapted:  # only the active expert in train mode (dropout)
            self.mix.expert(label).train(self.mix.training and label == active)
        return self.mixture_loss(model, x, y, years, trainable=[active])

    def save_weights(self, directory: Path) -> None:
        router = self.mix.router
        assert router is not None  # a coadapt mixture has a router
        save_router_weights(directory, router)
        for label in self.adapted:
            save_model_weights(directory / EMBEDDED_EXPERTS_DIR / label, self.mix.expert(label))

    def load_weights(self, directory: Path) -> None:
        router = self.mix.router
        assert router is not None
        router.load_state_dict(load_router_weights(directory))
        for label in self.adapted:
            load_weights_into(self.mix.expert(label), directory / EMBEDDED_EXPERTS_DIR / label)


def make_task(plan: MixturePlan, mix: TiMoE, env: DistEnv) -> CoadaptTask:
    cfg = plan.cfg
    assert isinstance(cfg, CoadaptConfig)
    return CoadaptTask(
        mix,
        plan.train_windows(),
        plan.val_windows(),
        seed=cfg.seed,
        eval_windows=cfg.eval_batches * cfg.batch_size,
        own_expert=plan.own_expert,
        adapted_weights=cfg.adapted_weights,
    )


def stage_task(stage: Stage) -> CoadaptTask:
    """One stage: the router and the expert of the slice holding the stage's year (a copy
    of its artefact usable then, which the driver took out of the shared pool)."""
    assert stage.holder is not None and isinstance(stage.cfg, CoadaptConfig)
    return CoadaptTask(stage.view, stage.windows, stage.val_windows, stage.cfg.seed,
                       stage.eval_windows, {stage.cutoff.year: stage.holder.label},
                       stage.cfg.adapted_weights)


RECIPE = MixtureRecipe(COADAPT, CoadaptConfig, make_task, stage_task, __name__)
