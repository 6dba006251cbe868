"""Staged (causal) routers: learned-avg and coadapt under the point-in-time policy.

An answer as of d may depend on no text dated after d, and that holds for the router
too. So the router trains in chronological stages, one per period end c (of its
--cutoff-every: month, quarter or year) with artefacts usable then, and one at every
artefact cutoff where a slice becomes usable (`router_cutoffs`). A period with nothing to
learn (fewer new windows than one step) and no new slice has no stage: the previous
router snapshot, the same weights, answers for it.

- stage c trains on the windows dated after the previous stage's cutoff, up to c (and
  in c's year), each read as of c, through the artefacts usable as of c
  (`point_in_time.select_artefacts`), and saves a router snapshot with cutoff c (the
  view holds only artefacts with cutoff <= c, all usable as of any date of c's year, so
  a window's year as its query date reads it as of c);
- its router starts from stage c-1's, grown by one slot per slice that became usable
  (`router.grow_router`: a new slot's init depends on the seed and its label only), so
  neither its shape nor its initialisation knows how many slices exist later;
- its budget is `--steps-per-stage N`, default one pass over the stage's windows (none:
  0 steps, the snapshot is the previous router grown), with its own AdamW and
  warmup-stable-decay schedule: nothing depends on later stages;
- coadapt: the expert of the slice holding c (its artefact usable as of c) is
  trained too, and saved as a derived artefact (generation + 1) with cutoff c; every
  other artefact is frozen.

A query as of d then uses the router snapshot with the largest cutoff <= d, whose slots
are exactly the slices usable as of d (`TiMoE.as_of`).

Layout of OUT (the bundle once every stage is done):

    mixture_run.json           what the run is; a rerun must match it (or --overwrite)
    stages/<date>/             each stage's training run dir (checkpoints, metrics,
                               log-prob cache), resumed when interrupted; once its
                               router snapshot is saved only metrics.jsonl stays
                               (--keep-stage-checkpoints keeps the rest)
    routers/<date>/router.safetensors     the router snapshot of each stage
    experts/<slice>@<date>+adapted/       coadapt: the adapted expert of each stage
    timoe.json, router.safetensors        written last (the latest router)

`StagedJob` is a `TrainingJob` that `job.run_job` runs like every other: its `plan`
checks the inputs and the run dir, `prepare_run_dir` records the run, and `stages`
yields each stage's task (made by the strategy's recipe, `stage_task`) to the shared
loop, one after the other, in this process (a completed stage is skipped on a rerun;
several workers are refused), then writes the bundle.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Generic

import torch

from timoe_core.config import config_to_dict, save_config
from timoe_core.data.manifest import check_compatible, load_manifest, resolve_seq_len
from timoe_core.data.windows import TokenWindows
from timoe_core.errors import TimoeError
from timoe_core.io import atomic_write_json, remove_output
from timoe_core.model.bundle import (
    BUNDLE_FILENAME,
    EMBEDDED_EXPERTS_DIR,
    ROUTER_FILENAME,
    ROUTER_SNAPSHOTS_DIR,
    embedded_dirname,
    load_router_weights,
    router_snapshot_dir,
    save_router_weights,
    write_bundle,
)
from timoe_core.model.expert_pool import ExpertRecord
from timoe_core.model.gpt import GPT
from timoe_core.model.mixture import TiMoE
from timoe_core.model.point_in_time import select_artefacts
from timoe_core.model.router import (
    Router,
    RouterConfig,
    RouterSnapshot,
    grow_router,
    slot_generator,
)
from timoe_core.model.run_info import MODEL_FILENAME
from timoe_core.model.weighting import Strategy
from timoe_core.model.weights import StorageDtype, load_weights_into, save_model_weights
from timoe_core.train import rng
from timoe_core.train.distributed import DistEnv, TrainingInterrupted
from timoe_core.train.job import StageRun, Stages, main_print
from timoe_core.train.metrics import METRICS_FILENAME
from timoe_core.train.mixture_record import (
    MIXTURE_RUN_FILENAME,
    MixtureConfig,
    clear_bundle_artifacts,
    decide_mixture_run_dir,
    mixture_options,
)
from timoe_core.train.mixture_run import check_required_inputs
from timoe_core.train.run_dir import (
    config_to_save,
    interrupted_message,
    open_run_dir,
    remove_training_state,
)
from timoe_core.train.stage import Stage, StageTaskFactory
from timoe_core.train.staging_plan import StagedPlan, check_inputs, router_cutoffs, staged_record
from timoe_core.train.task import BatchT
from timoe_core.train.trainer import amp_enabled

STAGES_DIRNAME = "stages"


def _fresh_router(cfg: MixtureConfig, labels: list[str], vocab_size: int, first: GPT) -> Router:
    """Stage 1's router: seeded by cfg.seed, token table from the earliest artefact usable
    then, every slot's date-feature column from (seed, label)."""
    rng.seed_all(cfg.seed)
    router = Router(RouterConfig(
        slice_labels=labels, vocab_size=vocab_size, embed_dim=cfg.router_embed_dim,
        hidden_dim=cfg.router_hidden_dim, date_features=cfg.router_date_features,
    ))
    router.init_embedding_from(first.wte.weight)
    with torch.no_grad():
        if router.date_proj is not None:
            for k, label in enumerate(labels):
                column = torch.randn(router.config.hidden_dim, generator=slot_generator(cfg.seed,
                                                                                        label))
                router.date_proj.weight[:, k] = column * 0.5
    return router


class StagedJob(Generic[BatchT]):
    """A strategy's staged (point-in-time) training as a `TrainingJob` (job.py): one stage
    per data cutoff, each stage's task made by the recipe's `stage_task`."""

    def __init__(
        self, strategy: Strategy, config_model: type[MixtureConfig],
        stage_task: StageTaskFactory[BatchT], ref: str,
    ) -> None:
        self.strategy = strategy
        self.config_model = config_model
        self.stage_task = stage_task
        self.ref = ref

    def plan(
        self, cfg: MixtureConfig, world_size: int | None = None, check_run_dir: bool = True,
        restart: bool = False,
    ) -> StagedPlan:
        data, out = check_inputs(cfg, self.strategy.name)
        base = TiMoE.from_expert_dirs(cfg.experts, strategy="avg", options=mixture_options(cfg))
        manifest = load_manifest(data)
        check_compatible(base, manifest, data)
        seq_len = resolve_seq_len(base, manifest, cfg.seq_len)
        record = staged_record(cfg, self.strategy.name, base, seq_len, manifest)
        plan = StagedPlan(cfg, self.strategy, out, record)
        if check_run_dir:
            plan.action = decide_mixture_run_dir(cfg, out, record, restart, checkpointed=False)
        return plan

    def prepare_run_dir(self, plan: StagedPlan) -> None:
        """Create or reset --out and record the run; the bundle file goes until every
        stage is done."""
        out = plan.run_dir
        if plan.action == "overwrite":
            clear_bundle_artifacts(out)
            for name in (STAGES_DIRNAME, ROUTER_SNAPSHOTS_DIR):
                remove_output(out / name)  # a link: only the link goes, never its target
            open_run_dir(out, "overwrite")
        out.mkdir(parents=True, exist_ok=True)
        (out / BUNDLE_FILENAME).unlink(missing_ok=True)  # until every stage is done
        atomic_write_json(out / MIXTURE_RUN_FILENAME, plan.record)
        save_config(config_to_save(plan.cfg), out)

    def stages(self, plan: StagedPlan, env: DistEnv) -> Stages:
        return _stages(plan.cfg, self.strategy, self.stage_task, env)


def _stages(
    cfg: MixtureConfig, strategy_: Strategy, stage_task: StageTaskFactory[BatchT], env: DistEnv
) -> Stages:
    """Each stage in time order (skipping completed ones), then the bundle."""
    strategy = strategy_.name
    adapts = strategy_.adapts_experts
    options = mixture_options(cfg)
    base = TiMoE.from_expert_dirs(cfg.experts, strategy="avg", options=options)
    data, out = check_required_inputs(cfg)
    manifest = load_manifest(data)
    seq_len = resolve_seq_len(base, manifest, cfg.seq_len)
    router_init: Path | None = getattr(cfg, "router", None)  # a coadapt config has no --router
    # how router snapshots (and coadapt's adapted experts) are stored
    dtype: StorageDtype = cfg.snapshot_dtype
    init_src = TiMoE.from_bundle(router_init) if router_init is not None else None

    say = main_print(env)
    device = env.device
    global_batch = cfg.batch_size * cfg.grad_accum
    cutoffs = router_cutoffs(base.artefacts, cfg.cutoff_every)
    all_train = TokenWindows(data, "train", manifest.years_with_tokens("train"), seq_len, manifest)
    all_val = TokenWindows(data, "val", manifest.years_with_tokens("val"), seq_len, manifest)
    previous: date | None = None
    shared: dict[str, GPT] = {}
    adapted: list[ExpertRecord] = []
    adapted_models: dict[str, GPT] = {}
    snapshots: list[RouterSnapshot] = []
    router: Router | None = None
    amp = amp_enabled(cfg, device)
    for cutoff in cutoffs:
        year = cutoff.year
        # The windows dated after the last trained stage's cutoff, up to this one, of this
        # stage's year (a year's earlier windows before the first stage are not read): a
        # period with fewer windows than a step trains nothing, and its windows wait for
        # the next stage of its year.
        after = max(previous or date.min, date(year - 1, 12, 31))
        pool = base.artefacts + adapted
        chosen = select_artefacts(pool, cutoff, "point-in-time")
        labels = [r.label for r in chosen]
        holder = next((r for r in chosen if r.time_slice.contains_year(year)), None)
        windows = all_train.dated(after, cutoff)
        n_windows = len(windows)
        steps = 0
        if n_windows >= global_batch and (holder is not None or not adapts):
            steps = cfg.steps_per_stage or n_windows // global_batch
        if steps:
            previous = cutoff
        if router is not None and steps == 0 and router.config.slice_labels == labels:
            continue  # nothing to learn and no new slice: the previous snapshot answers
        view = TiMoE(chosen, "avg", options, None, device, shared=shared)
        if router is None:
            first = init_src.router_for(cutoff) if init_src is not None else None
            if first is not None and first.router.config.slice_labels == labels:
                router = Router(first.router.config)
                router.load_state_dict(first.router.state_dict())
            elif init_src is not None:
                raise TimoeError(
                    f"--router {router_init} has no router snapshot over "
                    f"{', '.join(labels)} as of {cutoff.isoformat()}: give a bundle "
                    "trained by `timoe train-router --strategy learned-avg` on these experts"
                )
            else:
                router = _fresh_router(cfg, labels, base.vocab_size, view.expert(labels[0]))
        else:
            router = grow_router(router, labels, cfg.seed)
        router.to(device)
        router_dir = router_snapshot_dir(out, cutoff)
        new_rec = None
        if adapts and steps:
            assert holder is not None
            new_rec = ExpertRecord(
                info=holder.info, candidates=[], sha256=None, embedded=True,
                data_cutoff=cutoff, generation=holder.generation + 1,
            )
            new_rec.candidates = [out / EMBEDDED_EXPERTS_DIR / embedded_dirname(new_rec)]
        done = (router_dir / "router.safetensors").is_file() and (
            new_rec is None or (new_rec.candidates[0] / MODEL_FILENAME).is_file())
        if done:
            router.load_state_dict(load_router_weights(router_dir))
        elif steps:
            say(f"stage {cutoff.isoformat()}: {steps} steps on {n_windows} windows dated "
                f"{after + timedelta(days=1)}..{cutoff}, experts "
                f"{', '.join(r.key for r in chosen)}", highlight=False)
            val = all_val.dated(after, cutoff)
            yield from _train_stage(cfg, strategy_, stage_task, view, router, holder, windows,
                                    val, steps, cutoff, out, env, amp)
        if new_rec is not None:
            assert holder is not None
            if done:
                model = load_weights_into(GPT(holder.info.model_config_, init_weights=False),
                                          new_rec.candidates[0]).to(device).eval()
            else:
                model = view.expert(holder.label)
                # a delta from the artefact it went on from, where that is smaller
                save_model_weights(new_rec.candidates[0], model, dtype,
                                   parent=holder.weights_dir() / MODEL_FILENAME)
                if dtype != "float32":  # go on from what is stored, as a resumed run does
                    load_weights_into(model, new_rec.candidates[0])
            model.requires_grad_(False)
            model.eval()
            shared[new_rec.key] = model
            adapted_models[new_rec.key] = model
            adapted.append(new_rec)
        if not done:
            previous_router = (router_snapshot_dir(out, snapshots[-1].data_cutoff)
                               / ROUTER_FILENAME) if snapshots else None
            save_router_weights(router_dir, router, dtype, parent=previous_router)
            if dtype != "float32":  # go on from what is stored, as a resumed run does
                router.load_state_dict(load_router_weights(router_dir))
            if steps and not cfg.keep_stage_checkpoints:
                # Stage done: its snapshot is saved and a rerun skips it, so only its
                # metrics stay (trainer state, published weights, log-prob cache go).
                remove_training_state(out / STAGES_DIRNAME / cutoff.isoformat(),
                                                 keep=(METRICS_FILENAME,))
        frozen = Router(router.config)
        frozen.load_state_dict(router.state_dict())
        snapshots.append(RouterSnapshot(cutoff, frozen.eval()))
    if env.is_main:
        write_bundle(out, base.artefacts + adapted, adapted_models,
                     {r.key for r in adapted}, strategy, options, router, snapshots,
                     cutoffs[-1], dtype=dtype)
        say(f"bundle written to {out} ({strategy}, {len(snapshots)} router stages)",
            highlight=False)


def _train_stage(
    cfg: MixtureConfig, strategy: Strategy, stage_task: StageTaskFactory[BatchT], view: TiMoE,
    router: Router, holder: ExpertRecord | None, windows: TokenWindows, val: TokenWindows,
    steps: int, cutoff: date, out: Path, env: DistEnv, amp: bool,
) -> Stages:
    """One stage for the shared loop, in OUT/stages/<date> (resumable)."""
    stage_dir = out / STAGES_DIRNAME / cutoff.isoformat()
    stage_cfg = cfg.model_copy(update={"max_steps": steps, "out": stage_dir})
    open_run_dir(stage_dir, "resume")
    view.router = router
    view.strategy = strategy.name
    if strategy.adapts_experts:
        assert holder is not None
        # The adapted expert is a copy: the artefact it starts from stays as it is.
        view._shared = {k: m for k, m in view._shared.items() if k != holder.key}
        if holder.label in view._experts:
            del view._experts[holder.label]
    task = stage_task(Stage(
        cfg=cfg, cutoff=cutoff, view=view, windows=windows,
        val_windows=val if len(val) else None, holder=holder, steps=steps, run_dir=stage_dir,
        env=env, amp=amp, eval_windows=cfg.eval_batches * cfg.batch_size,
    ))
    # The stage's last checkpoint would be removed as soon as its snapshot is saved:
    # not written unless kept (its write and removal were most of a stage's fixed cost).
    result = yield StageRun(task, stage_cfg, stage_dir, steps,
                            f"{strategy.name} stage {cutoff.isoformat()}",
                            config_to_dict(stage_cfg),
                            checkpoint_at_end=cfg.keep_stage_checkpoints)
    if result.interrupted:
        raise TrainingInterrupted(interrupted_message(stage_dir))
