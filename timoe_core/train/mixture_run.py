"""The training job of every mixture strategy (learned-avg, coadapt): inputs, run dir, bundle.

`MixtureJob` is the `TrainingJob` (job.py) of a strategy whose recipe
(timoe_core/recipes/, a `train.recipe.MixtureRecipe`) trains part of a mixture; the
recipe supplies only its task (`make_task`). Both train part of a TiMoE mixture on a prepared data dir and write a bundle. The
output dir (--out) is at once the training run dir and the bundle:

    OUT/
      mixture_run.json     what the run is (strategy, experts and their checksums, data,
                           seq_len, policy, router shape, seed): a rerun must match it
      config.yaml          the resolved config (rerun it with --config to resume)
      metrics.jsonl, checkpoints/step-N/{router.safetensors, experts/<label>/...}
      router.safetensors   (and coadapt's experts/<label>/model.safetensors) the latest
                           checkpoint's weights, hard links, as train-expert does
      timoe.json           written last, once training ends: a folder holding it is a
                           complete bundle (`TiMoE.from_bundle`); removed when a rerun
                           trains on, so a half-trained folder never poses as a bundle
      logprob-cache/       learned-avg's cache of frozen log-probs (logprob_cache.py)

Query dates: a training window's own year is its query date ("2016" = the end of
2016), so windows of every data year train the router as of their year.

Data years without an eligible expert (before the first expert's slice under the
inclusive policy; also the first year of every slice under strict) cannot be scored by
any mixture: they are skipped, and the command prints which and why. coadapt also
skips years whose own slice has no expert (there is no expert to adapt on them). Only
when no year is left is it an error (exit 2). Skipping rather than refusing keeps a
mixture over part of the years (or a strict policy) trainable on a full data dir.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Generic

import torch

from timoe_core.config import save_config
from timoe_core.data.manifest import (
    Manifest,
    check_compatible,
    load_manifest,
    resolve_seq_len,
    token_files_read,
)
from timoe_core.data.windows import TokenWindows
from timoe_core.errors import TimoeError
from timoe_core.io import JSONObject, atomic_write_json, sha256_file
from timoe_core.model.bundle import BUNDLE_FILENAME, ROUTER_FILENAME
from timoe_core.model.mixture import TiMoE
from timoe_core.model.run_info import MODEL_FILENAME
from timoe_core.model.weighting import get_strategy
from timoe_core.timeslices import year_cutoff
from timoe_core.train import rng
from timoe_core.train.distributed import DistEnv
from timoe_core.train.job import Stages, main_print, single_stage
from timoe_core.train.launch import check_launch
from timoe_core.train.loop import LoopResult
from timoe_core.train.metrics import check_wandb_mode, wandb_run_id
from timoe_core.train.mixture_record import (
    MIXTURE_RUN_FILENAME,
    MixtureConfig,
    clear_bundle_artifacts,
    decide_mixture_run_dir,
    mixture_options,
    strategy_options,
)
from timoe_core.train.mixture_task import EvalBatch, MixtureTask
from timoe_core.train.run_dir import RunDirAction, config_to_save, open_run_dir
from timoe_core.train.schedule import budget_steps
from timoe_core.train.task import BatchT, TrainTask


@dataclass
class MixturePlan:
    """Everything checked and derived from the config before anything is written."""

    cfg: MixtureConfig
    strategy: str  # "learned-avg" | "coadapt" (or a plugin's)
    run_dir: Path
    data_dir: Path
    manifest: Manifest
    labels: list[str]  # the experts' slices, in time order
    expert_sha256: dict[str, str]
    seq_len: int
    years: list[int]  # data years trained on
    skipped: dict[int, str]  # data year -> why it is not trained on
    own_expert: dict[int, str]  # data year -> label of the slice holding it (if any)
    num_windows: int
    world_size: int
    total_steps: int
    data_files_sha256: dict[str, str]  # the token files it reads
    record: JSONObject  # mixture_run.json
    action: RunDirAction = "new"
    notes: list[str] = field(default_factory=list)

    @property
    def global_batch(self) -> int:
        c = self.cfg
        return c.batch_size * c.grad_accum * self.world_size

    @property
    def title(self) -> str:
        return f"{self.strategy} {self.labels[0]}..{self.labels[-1]}"

    def train_windows(self) -> TokenWindows:
        return TokenWindows(self.data_dir, "train", self.years, self.seq_len, self.manifest)

    def val_windows(self) -> TokenWindows | None:
        val = TokenWindows(self.data_dir, "val", self.years, self.seq_len, self.manifest)
        return val if len(val) else None


def _expert_sha256(mix: TiMoE) -> dict[str, str]:
    out = {}
    for label, directory in mix.expert_dirs.items():
        path = directory / MODEL_FILENAME
        if not path.is_file():
            raise TimoeError(
                f"the weights of expert {label} are missing: {path} does not exist "
                "(finish training it with `timoe train-expert`)"
            )
        out[label] = sha256_file(path)
    return out


def _years(
    mix: TiMoE, manifest: Manifest, strategy: str
) -> tuple[list[int], dict[int, str], dict[int, str]]:
    """(years trained on, {skipped year: why}, {year: own expert label})."""
    used, skipped, own = [], {}, {}
    for year in manifest.years_with_tokens("train"):
        holder = [s.label for s in mix.slices if s.contains_year(year)]
        if holder:
            own[year] = holder[0]
        try:
            eligible = [s.label for s in mix.eligible_experts(str(year))]
        except TimoeError:
            skipped[year] = f"no expert is eligible as of {year} (policy {mix.policy})"
            continue
        if get_strategy(strategy).adapts_experts:
            if not holder:
                skipped[year] = f"no expert for the slice holding {year} to adapt"
                continue
            if holder[0] not in eligible:
                skipped[year] = (
                    f"its own expert {holder[0]} is not eligible as of {year} (policy {mix.policy})"
                )
                continue
        used.append(year)
    return used, skipped, own


def _check_router_init(cfg: MixtureConfig, mix: TiMoE) -> str | None:
    """coadapt --router BUNDLE: that bundle's router must fit the experts; its checksum."""
    path = getattr(cfg, "router", None)
    if path is None:
        return None
    src = TiMoE.from_bundle(path)
    if src.router is None:
        raise TimoeError(
            f"--router {path} is an avg bundle without a router: give a bundle trained by "
            "`timoe train-router --strategy learned-avg` (or leave --router out)"
        )
    slots = src.router.config.slice_labels
    if slots != mix.labels or src.router.config.vocab_size != mix.vocab_size:
        raise TimoeError(
            f"--router {path} routes over experts {', '.join(slots)} (vocab "
            f"{src.router.config.vocab_size}) but --experts gives {', '.join(mix.labels)} "
            f"(vocab {mix.vocab_size}): use a router trained on these experts"
        )
    return sha256_file(Path(path) / ROUTER_FILENAME)


def check_required_inputs(cfg: MixtureConfig) -> tuple[Path, Path]:
    """--experts, --data and --out: what every trained mixture needs (TimoeError);
    returns (data dir, out dir), now known to be given."""
    if not cfg.experts:
        raise TimoeError("--experts is required: a folder of expert run dirs (or run dirs)")
    if cfg.data is None:
        raise TimoeError("--data DATA_DIR is required: a folder made by `timoe prepare-data`")
    if cfg.out is None:
        raise TimoeError("--out is required: the folder to write the run and its bundle to")
    return cfg.data, cfg.out


def plan_mixture_run(
    cfg: MixtureConfig,
    strategy: str,
    world_size: int | None = None,
    check_run_dir: bool = True,
    restart: bool = False,
) -> MixturePlan:
    """Check every input and derive the run; raises TimoeError, writes nothing."""
    data_dir, out = check_required_inputs(cfg)
    world_size = check_launch(cfg, world_size)
    check_wandb_mode(cfg.wandb)

    # avg: reads run.json files only; the trained mixture is built in the workers.
    mix = TiMoE.from_expert_dirs(cfg.experts, strategy="avg", options=mixture_options(cfg))
    manifest = load_manifest(data_dir)
    check_compatible(mix, manifest, data_dir)
    seq_len = resolve_seq_len(mix, manifest, cfg.seq_len)

    years, skipped, own = _years(mix, manifest, strategy)
    if not years:
        why = "; ".join(f"{y}: {r}" for y, r in skipped.items()) or "it has no training tokens"
        raise TimoeError(
            f"no data year of {cfg.data} can train the {strategy} mixture of experts "
            f"{', '.join(mix.labels)} ({why}): give experts for the data's years"
        )
    windows = TokenWindows(data_dir, "train", years, seq_len, manifest)
    if len(windows) == 0:
        raise TimoeError(
            f"no training windows of {seq_len + 1} tokens in {cfg.data} for years "
            f"{', '.join(map(str, years))}: prepare more data or use a shorter --seq-len"
        )
    global_batch = cfg.batch_size * cfg.grad_accum * world_size
    step_what = (
        f"{global_batch} windows ({cfg.batch_size} --batch-size x {cfg.grad_accum} "
        f"--grad-accum x {world_size} workers) of {seq_len + 1} tokens"
    )
    if get_strategy(strategy).adapts_experts:  # a step reads one slice (its expert's)
        per_slice: dict[str, int] = {}
        for y, n in zip(*_window_counts(windows)):
            per_slice[own[y]] = per_slice.get(own[y], 0) + n
        steps_per_epoch = sum(n // global_batch for n in per_slice.values())
        if steps_per_epoch == 0:
            sizes = ", ".join(f"{k}: {n}" for k, n in per_slice.items())
            raise TimoeError(
                f"a coadapt step reads {step_what} from one slice, but no slice has that many "
                f"({sizes}): lower --batch-size or --grad-accum, or use a shorter --seq-len"
            )
    else:
        if global_batch > len(windows):
            raise TimoeError(
                f"one step needs {step_what} but the data has {len(windows)}: lower "
                "--batch-size or --grad-accum, or use a shorter --seq-len"
            )
        steps_per_epoch = len(windows) // global_batch
    total_steps = budget_steps(
        cfg,
        steps_per_epoch * global_batch,
        global_batch,
        global_batch * seq_len,
    )

    expert_sha = _expert_sha256(mix)
    router_init = _check_router_init(cfg, mix)
    data_files = token_files_read(manifest, years)
    record: JSONObject = {
        "strategy": strategy,
        "experts": expert_sha,
        "data_files_sha256": data_files,
        "years": years,
        "seq_len": seq_len,
        "policy": cfg.policy,
        "top_k": cfg.top_k,
        "router_embed_dim": cfg.router_embed_dim,
        "router_hidden_dim": cfg.router_hidden_dim,
        "router_date_features": cfg.router_date_features,
        "router_init": router_init,
        "seed": cfg.seed,
    }
    record |= strategy_options(cfg)
    plan = MixturePlan(
        cfg=cfg,
        strategy=strategy,
        run_dir=Path(out),
        data_dir=data_dir,
        manifest=manifest,
        labels=mix.labels,
        expert_sha256=expert_sha,
        seq_len=seq_len,
        years=years,
        skipped=skipped,
        own_expert=own,
        num_windows=len(windows),
        world_size=world_size,
        total_steps=total_steps,
        data_files_sha256=data_files,
        record=record,
    )
    if skipped:
        plan.notes.append(
            "skipping data years without a usable expert: "
            + "; ".join(f"{y} ({r})" for y, r in skipped.items())
        )
    if check_run_dir:
        plan.action = decide_mixture_run_dir(cfg, plan.run_dir, record, restart,
                                             checkpointed=True)
    return plan


def _window_counts(windows: TokenWindows) -> tuple[list[int], list[int]]:
    years, counts = [], []
    for y in windows.years:
        years.append(y)
        counts.append(int((windows.window_years == y).sum()))
    return years, counts


def prepare_run_dir(plan: MixturePlan) -> None:
    """Create or reset --out and record what the run is; the old bundle file goes, since
    the weights beside it are about to change."""
    if plan.action == "overwrite":
        clear_bundle_artifacts(plan.run_dir)
    open_run_dir(plan.run_dir, plan.action)
    (plan.run_dir / BUNDLE_FILENAME).unlink(missing_ok=True)
    atomic_write_json(plan.run_dir / MIXTURE_RUN_FILENAME, plan.record)
    save_config(config_to_save(plan.cfg), plan.run_dir)
    if plan.cfg.wandb != "disabled":
        wandb_run_id(plan.run_dir, create=True)


# ------------------------------------------------------------------- training


def build_mixture(plan: MixturePlan, device: torch.device) -> TiMoE:
    """The mixture to train: the experts (loaded when used), a router seeded by cfg.seed
    (its output layer is zero, so training starts from avg), or --router's."""
    cfg = plan.cfg
    rng.seed_all(cfg.seed)
    mix = TiMoE.from_expert_dirs(
        cfg.experts, strategy=plan.strategy, options=mixture_options(cfg), device=device
    )
    router_init = getattr(cfg, "router", None)  # coadapt --router BUNDLE
    if plan.record.get("router_init") is not None and router_init is not None:
        src = TiMoE.from_bundle(router_init)
        assert src.router is not None  # checked when planned (_check_router_init)
        mix.router = src.router.to(device)
    return mix


def training_cutoff(plan: MixturePlan, mix: TiMoE) -> date:
    """The latest text a router trained over every year (and the experts adapted with it)
    has read: its windows' last year, and every expert its loss went through."""
    return max([year_cutoff(max(plan.years))] + [r.cutoff for r in mix.artefacts])


# A recipe's task over the planned run's windows (the mixture built, on this worker).
TaskFactory = Callable[[MixturePlan, TiMoE, DistEnv], MixtureTask[BatchT]]


class MixtureJob(Generic[BatchT]):
    """A strategy's training run as a `TrainingJob` (job.py), made by its recipe
    (`train.recipe.MixtureRecipe.job`): `ref` names the recipe's job for spawned
    workers ("module:RECIPE.job")."""

    def __init__(
        self, strategy: str, config_model: type[MixtureConfig], make_task: TaskFactory[BatchT],
        ref: str,
    ) -> None:
        self.strategy = strategy
        self.config_model = config_model
        self.make_task = make_task
        self.ref = ref

    def plan(
        self, cfg: MixtureConfig, world_size: int | None = None, check_run_dir: bool = True,
        restart: bool = False,
    ) -> MixturePlan:
        return plan_mixture_run(cfg, self.strategy, world_size, check_run_dir, restart)

    def prepare_run_dir(self, plan: MixturePlan) -> None:
        prepare_run_dir(plan)

    def stages(self, plan: MixturePlan, env: DistEnv) -> Stages:
        """One stage over every year."""
        return single_stage(self, plan, env)

    def build_task(self, plan: MixturePlan, env: DistEnv) -> MixtureTask[BatchT]:
        return self.make_task(plan, build_mixture(plan, env.device), env)

    def wandb_config(self, plan: MixturePlan, env: DistEnv) -> dict[str, object]:
        return {
            "strategy": plan.strategy,
            "experts": plan.labels,
            "years": plan.years,
            "world_size": env.world_size,
            "total_steps": plan.total_steps,
        }

    def finish(self, plan: MixturePlan, task: TrainTask[BatchT, EvalBatch], result: LoopResult,
               env: DistEnv) -> None:
        """Rank 0 writes the bundle (timoe.json last: the bundle is complete)."""
        assert isinstance(task, MixtureTask)
        if not result.interrupted and env.is_main:
            task.mix.eval()
            task.mix.record_training_cutoff(training_cutoff(plan, task.mix))
            task.mix.save_bundle(plan.run_dir)
            main_print(env)(
                f"bundle written to {plan.run_dir} ({plan.strategy}, step {result.step})",
                highlight=False,
            )
        env.barrier()
