"""The shared training loop: data order, gradient accumulation, checkpoints, exact resume.

Runs in-process through the Python API (`train_expert`) on synthetic data with a small
vocabulary, so each run takes a fraction of a second on a CPU.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from helpers import make_data_dir, one_thread  # noqa: F401 (fixture)
from safetensors.torch import load_file

from timoe_core.config import TrainExpertConfig
from timoe_core.data.windows import TokenWindows
from timoe_core.errors import TimoeError
from timoe_core.model.gpt import GPT, preset_config
from timoe_core.train import state as ckpt_state
from timoe_core.train.distributed import DistEnv
from timoe_core.train.expert import train_expert
from timoe_core.train.expert_task import ExpertTask
from timoe_core.train.metrics import read_metrics
from timoe_core.train.orders import DataPosition, GroupedOrder, ShuffledOrder
from timoe_core.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 512  # a small vocabulary keeps CPU steps in milliseconds


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("loop"), vocab_size=VOCAB, seq_len=32)


def cfg(data, out, **kw) -> TrainExpertConfig:
    base = {"year": 2013, "data": data, "out": out, "seq_len": 32, "batch_size": 4}
    # One shuffled run of --max-steps (the loop's own behaviour, no stages).
    base |= {"log_every": 5, "max_steps": 10, "device": "cpu", "snapshots": "none"}
    return TrainExpertConfig(**(base | kw))


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


# ------------------------------------------------------------------ data order


def test_shuffled_order_is_disjoint_within_an_epoch_and_matches_token_windows(data):
    windows = TokenWindows(data, "train", [2013, 2014], 32)
    order = ShuffledOrder(len(windows), lambda e: windows.shuffled_indices(7, e))
    pos, seen = DataPosition(), []
    for _ in range(len(windows) // 10):
        idx, pos = order.take(pos, 10)
        seen.extend(idx.tolist())
    assert len(seen) == len(set(seen))  # nothing read twice in an epoch
    assert seen == windows.shuffled_indices(7, 0)[: len(seen)].tolist()
    idx, pos = order.take(pos, 10)  # the remainder is too short: next epoch
    assert pos == DataPosition(1, 10)
    assert idx.tolist() == windows.shuffled_indices(7, 1)[:10].tolist()


def test_grouped_order_gives_one_group_per_step_deterministically():
    groups = np.repeat([2013, 2015, 2017], [40, 25, 33])
    order = GroupedOrder(groups, seed=3)
    pos, steps = DataPosition(), []
    for _ in range(3 * 10):
        idx, pos = order.take(pos, 8)
        assert len(set(groups[idx])) == 1  # every step from one slice
        steps.append(idx.tolist())
    epoch0 = [i for s in steps[:12] for i in s]  # 5 + 3 + 4 full blocks in epoch 0
    assert len(epoch0) == len(set(epoch0))
    assert pos.epoch == 2
    again = GroupedOrder(groups, seed=3)
    assert again.take(DataPosition(), 8)[0].tolist() == steps[0]


# ----------------------------------------------------------- accumulation


def _trainer(data, batch_size: int, grad_accum: int) -> tuple[Trainer, ExpertTask]:
    torch.manual_seed(0)
    model = GPT(preset_config("tiny", vocab_size=VOCAB, block_size=32))
    windows = TokenWindows(data, "train", [2013, 2014], 32)
    task = ExpertTask(model, windows, None, seed=0, eval_windows=0)
    c = cfg(data, None, batch_size=batch_size, grad_accum=grad_accum)
    return Trainer(task, c, DistEnv(), total_steps=10), task


def test_grad_accumulation_4_by_quarter_equals_1_by_full(data):
    idx = np.arange(16)
    full, task_f = _trainer(data, 16, 1)
    full.accumulate([task_f.batch(idx, torch.device("cpu"))], 1)
    acc, task_a = _trainer(data, 4, 4)
    acc.accumulate([task_a.batch(part, torch.device("cpu")) for part in np.split(idx, 4)], 4)
    for (name, p), q in zip(full.raw.named_parameters(), acc.raw.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_grad_accumulation_gives_the_same_run(data, tmp_path):
    a = train_expert(cfg(data, tmp_path / "a", batch_size=8, grad_accum=1, max_steps=3))
    b = train_expert(cfg(data, tmp_path / "b", batch_size=2, grad_accum=4, max_steps=3))
    wa, wb = weights(a), weights(b)
    for k in wa:
        # AdamW divides by sqrt(v): float noise of the summed gradient stays far below
        # one step's update (lr 1e-3).
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-4, msg=k)


# ----------------------------------------------------------------- training


def test_loss_falls_clearly_over_50_steps(data, tmp_path):
    # Synthetic text with learnable structure (a repeated motif per year).
    run = train_expert(cfg(data, tmp_path / "r", max_steps=50, log_every=10, lr=3e-3))
    records = read_metrics(run)
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in train] == [1, 10, 20, 30, 40, 50]
    first, last = train[0]["loss"], train[-1]["loss"]
    assert first == pytest.approx(np.log(VOCAB), abs=0.3)  # starts near uniform
    assert last < first - 3.0, (first, last)
    assert evals and evals[-1]["step"] == 50 and evals[-1]["eval_loss"] < first - 3.0
    assert train[-1]["tokens"] == 50 * 4 * 32
    assert train[0]["lr"] == pytest.approx(3e-3 / 3)  # warmup: 3 steps of 50 (5%, rounded)
    assert train[-1]["lr"] == pytest.approx(3e-4)  # decay ends at the floor


def test_resume_20_then_40_equals_uninterrupted_40_bitwise(data, tmp_path):
    # The scenario: --max-steps 20, then the same command with --max-steps 40.
    # A constant lr makes the first 20 steps identical in both; dropout makes the
    # restored RNG state matter.
    common = {"dropout": 0.1, "warmup_fraction": 0.0, "decay_fraction": 0.0}
    full = train_expert(cfg(data, tmp_path / "full", max_steps=40, **common))
    part = train_expert(cfg(data, tmp_path / "part", max_steps=20, **common))
    assert ckpt_state.latest_checkpoint(part).step == 20
    train_expert(cfg(data, tmp_path / "part", max_steps=40, **common))
    assert_bitwise_equal(weights(full), weights(part))
    steps = [r["step"] for r in read_metrics(part) if r["type"] == "train"]
    assert steps == [1, 5, 10, 15, 20, 25, 30, 35, 40]  # continued at 20, not restarted


def test_interrupted_wsd_run_resumed_equals_uninterrupted_bitwise(data, tmp_path):
    # Stopping part-way through a 40-step warmup-stable-decay run (as a kill or Ctrl-C
    # would) and rerunning gives the uninterrupted weights, optimizer state included.
    full = train_expert(cfg(data, tmp_path / "full", max_steps=40, dropout=0.1))
    part = cfg(data, tmp_path / "part", max_steps=40, dropout=0.1)
    train_expert(part.model_copy(update={"stop_at_step": 13}))
    assert ckpt_state.latest_checkpoint(tmp_path / "part").step == 13
    train_expert(part)
    assert_bitwise_equal(weights(full), weights(tmp_path / "part"))
    a = ckpt_state.load_trainer_state(ckpt_state.latest_checkpoint(full))
    b = ckpt_state.load_trainer_state(ckpt_state.latest_checkpoint(tmp_path / "part"))
    assert a["data"] == b["data"] and a["tokens"] == b["tokens"]
    assert a["schedule"] == b["schedule"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_a_run_extended_inside_its_warmup_resumes_the_schedule_it_had(data, tmp_path):
    # The schedule's state is loaded on resume: a 40-step run (warmup 10 steps) stopped
    # at step 5 and rerun with --max-steps 80 goes on with its 10-step warmup, as the
    # uninterrupted 40-step run does, not the 20 steps a fresh 80-step run would take;
    # only the decay moves to the new end.
    common = {"warmup_fraction": 0.25, "decay_fraction": 0.1, "log_every": 1, "dropout": 0.1}
    full = train_expert(cfg(data, tmp_path / "full", max_steps=40, stop_at_step=30, **common))
    part = cfg(data, tmp_path / "part", max_steps=40, **common)
    train_expert(part.model_copy(update={"stop_at_step": 5}))
    train_expert(part.model_copy(update={"max_steps": 80, "stop_at_step": 30}))

    def lrs(run_dir):
        return [(r["step"], r["lr"]) for r in read_metrics(run_dir) if r["type"] == "train"]

    assert len(lrs(full)) == 30 and lrs(tmp_path / "part") == lrs(full)
    assert_bitwise_equal(weights(full), weights(tmp_path / "part"))
    saved = ckpt_state.load_trainer_state(ckpt_state.latest_checkpoint(tmp_path / "part"))
    assert saved["schedule"]["warmup_steps"] == 10 and saved["schedule"]["total_steps"] == 80


# -------------------------------------------------------------- checkpoints


def test_checkpoint_layout_and_weights_only_state(data, tmp_path):
    run = train_expert(cfg(data, tmp_path / "r", max_steps=9, checkpoint_every=3))
    ckpts = ckpt_state.list_checkpoints(run)
    assert [c.step for c in ckpts] == [6, 9]  # every 3 steps, the last 2 kept
    assert sorted(p.name for p in ckpts[-1].path.iterdir()) == [
        "model.safetensors",
        "trainer_state.pt",
    ]
    # The run dir's weights are the latest checkpoint's (same file).
    assert (run / "model.safetensors").samefile(ckpts[-1].path / "model.safetensors")
    state = torch.load(ckpts[-1].state_path, weights_only=True)  # plain data only
    assert state["step"] == 9 and state["tokens"] == 9 * 4 * 32
    assert state["data"] == {"epoch": 0, "offset": 9 * 4}
    assert state["world_size"] == 1 and len(state["rng"]) == 1
    assert set(state["rng"][0]) == {"torch", "numpy", "python", "cuda"}
    assert set(state["files"]) == {"model.safetensors"}


def test_a_write_killed_midway_leaves_the_previous_checkpoint(data, tmp_path, monkeypatch):
    c = cfg(data, tmp_path / "r", max_steps=8, checkpoint_every=4)
    train_expert(c.model_copy(update={"stop_at_step": 4}))

    def killed(*a, **k):  # dies after the weights, before the trainer state
        raise SystemExit("killed")

    monkeypatch.setattr(ckpt_state.torch, "save", killed)
    with pytest.raises(SystemExit):
        train_expert(c)
    monkeypatch.undo()
    assert ckpt_state.latest_checkpoint(tmp_path / "r").step == 4  # the pair at 4 is intact
    ckpt_state.load_trainer_state(ckpt_state.latest_checkpoint(tmp_path / "r"))
    # A leftover temp folder (a kill without cleanup) is ignored and removed on resume.
    (tmp_path / "r" / "checkpoints" / ".tmp-step-00000008-dead").mkdir()
    train_expert(c)
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000008"]
    uninterrupted = train_expert(cfg(data, tmp_path / "u", max_steps=8, checkpoint_every=4))
    assert_bitwise_equal(weights(uninterrupted), weights(tmp_path / "r"))


def test_damaged_checkpoint_files_are_refused_naming_the_file(data, tmp_path):
    run = train_expert(cfg(data, tmp_path / "r", max_steps=2))
    ckpt = ckpt_state.latest_checkpoint(run)
    weights_file = ckpt.path / "model.safetensors"
    blob = bytearray(weights_file.read_bytes())
    blob[-10] ^= 0xFF
    weights_file.write_bytes(bytes(blob))
    with pytest.raises(TimoeError, match="model.safetensors is corrupt"):
        ckpt_state.load_trainer_state(ckpt)
    ckpt.state_path.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(TimoeError, match="trainer_state.pt is corrupt"):
        ckpt_state.load_trainer_state(ckpt)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_malicious_pickle_in_trainer_state_is_refused(data, tmp_path, capsys):
    run = train_expert(cfg(data, tmp_path / "r", max_steps=2))
    ckpt = ckpt_state.latest_checkpoint(run)
    ckpt.state_path.write_bytes(pickle.dumps({"step": 2, "x": _Evil()}))
    capsys.readouterr()
    with pytest.raises(TimoeError, match="trainer_state.pt is corrupt"):
        ckpt_state.load_trainer_state(ckpt)
    assert "pwned" not in capsys.readouterr().out


def test_metrics_after_the_checkpoint_are_dropped_on_resume(data, tmp_path):
    c = cfg(data, tmp_path / "r", max_steps=10, checkpoint_every=5, log_every=1)
    train_expert(c.model_copy(update={"stop_at_step": 7}))  # checkpoints at 5 and 7
    # Pretend the run was killed after logging step 9 with its last checkpoint at 7.
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"type": "train", "step": 9, "loss": 1.0}) + "\n")
        f.write('{"type": "train", "st')  # a line cut by the kill
    train_expert(c)
    steps = [r["step"] for r in read_metrics(tmp_path / "r") if r["type"] == "train"]
    assert steps == list(range(1, 11))


def test_checkpoints_hold_nested_weight_files(tmp_path):
    # What a task training several modules writes (e.g. a router and one file per expert).
    def save(directory):
        (directory / "experts" / "2013-2014").mkdir(parents=True)
        (directory / "router.safetensors").write_bytes(b"router")
        (directory / "experts" / "2013-2014" / "model.safetensors").write_bytes(b"expert")

    minimal = {"tokens": 0, "elapsed": 0.0, "data": {}, "optimizer": {}, "schedule": {}}
    minimal |= {"rng": [], "world_size": 1}
    ckpt = ckpt_state.write_checkpoint(tmp_path, 3, save, minimal, keep=1)
    state = torch.load(ckpt.state_path, weights_only=True)
    assert set(state["files"]) == {"router.safetensors", "experts/2013-2014/model.safetensors"}
    assert (tmp_path / "experts" / "2013-2014" / "model.safetensors").read_bytes() == b"expert"
    (ckpt.path / "experts" / "2013-2014" / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(TimoeError, match="2013-2014/model.safetensors is corrupt"):
        ckpt_state.load_trainer_state(ckpt)


@pytest.mark.slow
def test_tiny_expert_on_the_builtin_corpus_loss_falls_over_50_steps(tmp_path):
    from timoe_core.config import PrepareDataConfig
    from timoe_core.data.prepare import prepare_data

    data = tmp_path / "data"
    prepare_data(
        PrepareDataConfig(
            source="builtin", out=data, builtin_docs_per_year=30, seq_len=64, workers=1,
            val_fraction=0.1,  # held-out windows in 2013-2014 (0.5% of 60 documents: by luck)
        )
    )
    # Real GPT-2 vocabulary (50304 outputs): a narrow model and small batches keep the
    # CPU cost of the output layer to a few seconds.
    c = cfg(
        data,
        tmp_path / "r",
        seq_len=64,
        batch_size=2,
        n_layer=1,
        n_embd=64,
        n_head=2,
        lr=3e-3,
        max_steps=50,
        log_every=10,
    )
    run = train_expert(c)
    train = [r for r in read_metrics(run) if r["type"] == "train"]
    evals = [r for r in read_metrics(run) if r["type"] == "eval"]
    first, last = train[0]["loss"], train[-1]["loss"]
    assert first == pytest.approx(np.log(50304), abs=0.5)
    assert last < first - 3.0, (first, last)
    assert evals[-1]["eval_loss"] < first - 3.0


# ------------------------------------------------------- GPU-ready step, on CPU

_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__array__")


@pytest.fixture
def host_reads(monkeypatch):
    """Every tensor read back to the host by timoe's own code (on CUDA each one waits for
    the device): a list of (function, method) that grows as they happen."""
    import sys

    seen: list[tuple[str, str]] = []
    for name in _READS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, _original=original, _name=name, **kw):
            caller = sys._getframe(1)
            if "timoe_core" in caller.f_code.co_filename:
                seen.append((caller.f_code.co_name, _name))
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return seen


def test_the_train_step_reads_nothing_back_to_the_host(data, host_reads):
    trainer, task = _trainer(data, 4, 2)
    idx = np.arange(8)
    before = {n: p.detach().clone() for n, p in trainer.raw.named_parameters()}
    for step in range(3):
        batches = (task.batch(part, torch.device("cpu")) for part in np.split(idx, 2))
        loss, _, grad_norm = trainer.step(step, batches, 2)
    assert host_reads == []
    assert loss.dim() == 0 and grad_norm is not None and grad_norm.dim() == 0  # still tensors
    assert any(not torch.equal(p, before[n]) for n, p in trainer.raw.named_parameters())


def test_the_loop_reads_back_only_when_it_logs(data, tmp_path, host_reads):
    # Logs at step 1 and the last: the reads of 12 steps are those of 2 steps.
    train_expert(cfg(data, tmp_path / "a", max_steps=2, log_every=1000))
    two = list(host_reads)
    host_reads.clear()
    train_expert(cfg(data, tmp_path / "b", max_steps=12, log_every=1000))
    assert host_reads == two and two  # the log steps do read (the loss, the grad norm)
    host_reads.clear()
    train_expert(cfg(data, tmp_path / "c", max_steps=12, log_every=1))
    assert len(host_reads) > len(two)  # reading more often is seen


def test_runtime_choices_resolve_per_device_and_are_recorded(data, tmp_path):
    from timoe_core.config import TrainingConfig
    from timoe_core.train.trainer import RuntimeChoices

    cpu = RuntimeChoices.resolve(TrainingConfig(), torch.device("cpu"), [])
    assert cpu.to_dict() == {"device": "cpu", "amp": False, "compile": False, "tf32": False,
                             "fused_adamw": True, "pin_memory": False}  # no parameter: vacuous
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert RuntimeChoices.resolve(TrainingConfig(), torch.device("cpu"), p).fused_adamw is False
    cuda = RuntimeChoices.resolve(TrainingConfig(), torch.device("cuda", 0), [])
    assert (cuda.amp, cuda.compile, cuda.tf32, cuda.fused_adamw, cuda.pin_memory) == (True,) * 5
    off = RuntimeChoices.resolve(TrainingConfig(compile=False, tf32=False, amp=False,
                                                fused_adamw=False), torch.device("cuda"), [])
    assert (off.amp, off.compile, off.tf32, off.fused_adamw) == (False,) * 4
    run = train_expert(cfg(data, tmp_path / "r", max_steps=2))
    first = read_metrics(run)[0]
    assert first == {"type": "runtime", "step": 0, "total_steps": 2, "device": "cpu",
                     "amp": False, "compile": False, "tf32": False, "fused_adamw": False,
                     "pin_memory": False}
    saved = (run / "config.yaml").read_text()
    assert "compile: null" in saved and "tf32: true" in saved and "fused_adamw: null" in saved
