"""Snapshot kinds (`--snapshot-kind average|decay`) and their storage (`--snapshot-dtype`):
what each writes, that a stopped and resumed run writes bitwise the same snapshots, that a
resume with another kind is refused, and the point-in-time proof, with yearly stages,
for the kinds and dtypes (tests/test_counterfactual.py builds monthly stages, its experts
averaged and its dense series with decay branches, and tests/test_counterfactual_chained.py
both the defaults and yearly float32 decay branches): a full build against one from `prepare-data --until D`, bitwise
on every snapshot with cutoff <= D (weights, run.json, snapshot.json) and on the answers
as of D."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from helpers import make_data_dir, one_thread, run_cli  # noqa: F401 (fixture)
from safetensors import safe_open

from timoe_core.config import (
    CoadaptConfig,
    EvaluateConfig,
    PrepareDataConfig,
    TrainExpertConfig,
    TrainRouterConfig,
)
from timoe_core.data.prepare import prepare_data
from timoe_core.evaluate.run import run_evaluate
from timoe_core.model.expert_pool import run_dir_artefacts
from timoe_core.model.gpt import GPT
from timoe_core.model.run_info import read_run_info
from timoe_core.model.weights import load_model_weights, load_weights_into, read_weights_file
from timoe_core.recipes.registry import coadapt, train_router
from timoe_core.train import train_expert
from timoe_core.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
STAGED = ["--seq-len", "32", "--batch-size", "4", "--log-every", "5", "--device", "cpu",
          "--steps-per-stage", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 2013 and 2014 (a closed slice), and 2017 only (its slice 2017-2018 is open)
    return make_data_dir(tmp_path_factory.mktemp("kinds"), years=(2013, 2014, 2017),
                         vocab_size=512)


def train(capsys, data, out, *flags: str, year: str = "2013") -> tuple[int, str, str]:
    return run_cli(capsys, "train-expert", "--data", data, "--out", out, "--year", year,
                   *STAGED, *flags)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_model_weights(folder)


def same_files(a: Path, b: Path, names=("model.safetensors", "run.json", "snapshot.json")):
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def optimizer_steps(monkeypatch, fn) -> int:
    n = [0]
    original = Trainer.apply

    def counted(self, *a, **k):
        n[0] += 1
        return original(self, *a, **k)

    monkeypatch.setattr(Trainer, "apply", counted)
    fn()
    monkeypatch.setattr(Trainer, "apply", original)
    return n[0]


def test_average_kind_takes_no_extra_step_and_records_itself(capsys, data, tmp_path, monkeypatch):
    steps = {kind: optimizer_steps(monkeypatch, lambda k=kind: train(
        capsys, data, tmp_path / k, "--snapshot-kind", k)) for kind in ("average", "decay")}
    # 3 + 3 main steps and the final decay of 1; the decay kind adds its 2013 branch (1)
    assert steps == {"average": 7, "decay": 8}
    snap = "snapshots/2013-12-31"
    meta = json.loads((tmp_path / "average" / snap / "snapshot.json").read_text())
    assert meta["kind"] == "average" and meta["average_fraction"] == 0.03  # the default
    assert (meta["stage_end"], meta["stage_steps"], meta["decay_steps"]) == ("2013-12-31", 3, 0)
    assert meta["dtype"] == "bfloat16"  # the default
    assert json.loads((tmp_path / "decay" / snap / "snapshot.json").read_text())["kind"] == "decay"
    # The same main line: the final weights agree; the snapshots are other weights.
    avg, dec = tensors(tmp_path / "average" / snap), tensors(tmp_path / "decay" / snap)
    assert all(torch.equal(a, b) for a, b in zip(tensors(tmp_path / "average").values(),
                                                 tensors(tmp_path / "decay").values()))
    assert not torch.equal(avg["wte.weight"], dec["wte.weight"])


def test_the_average_is_the_running_average_of_the_main_line(capsys, data, tmp_path):
    # --checkpoint-every 1 keeps the main line's weights after every step (the
    # checkpoints); the snapshot after stage 2013 (3 steps) must be their running average
    # with weights 1/max(1, 0.5 t): w1, then w2, then lerp(w2, w3, 1/1.5), stored whole.
    code, _, err = train(capsys, data, tmp_path / "a", "--snapshot-kind", "average",
                         "--snapshot-average-fraction", "0.5", "--checkpoint-every", "1",
                         "--keep-checkpoints", "100", "--snapshot-dtype", "float32")
    assert code == 0, err
    w = {t: tensors(tmp_path / "a" / "checkpoints" / f"step-{t:08d}") for t in (1, 2, 3)}
    snap = tensors(tmp_path / "a" / "snapshots/2013-12-31")
    for name, value in snap.items():
        expected = torch.lerp(w[2][name], w[3][name], 1 / 1.5)
        assert torch.equal(value, expected), name


@pytest.mark.parametrize("kind", ["average", "decay"])
def test_a_stopped_and_resumed_run_writes_bitwise_the_same_snapshots(capsys, data, tmp_path,
                                                                     kind):
    # (a horizon of half the steps: the average at step 3 weighs steps 2 and 3, so a
    # resume from step 2 that lost the average's state would write another snapshot)
    flags = ["--snapshot-kind", kind, "--snapshot-dtype", "bfloat16",
             *(["--snapshot-average-fraction", "0.5"] if kind == "average" else [])]
    assert train(capsys, data, tmp_path / "a", *flags)[0] == 0
    for stop in ("2", "4"):  # inside stage 2013, inside 2014
        b = tmp_path / f"b{stop}"
        assert train(capsys, data, b, *flags, "--stop-at-step", stop)[0] == 0
        assert train(capsys, data, b, *flags)[0] == 0
        snap = "snapshots/2013-12-31"
        assert same_files(tmp_path / "a" / snap, b / snap)
        assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
            b / "model.safetensors").read_bytes()
    # an open slice (2017 only): its snapshot at the run's last stage end, resumed from
    # inside that stage
    assert train(capsys, data, tmp_path / "o", *flags, year="2017")[0] == 0
    assert train(capsys, data, tmp_path / "p", *flags, "--stop-at-step", "2", year="2017")[0] == 0
    assert train(capsys, data, tmp_path / "p", *flags, year="2017")[0] == 0
    for sub in (["snapshots/2017-12-31"] if kind == "average" else []):
        assert same_files(tmp_path / "o" / sub, tmp_path / "p" / sub)


def test_a_resume_with_another_kind_or_dtype_is_refused_naming_the_flag(capsys, data, tmp_path):
    out = tmp_path / "r"
    assert train(capsys, data, out, "--snapshot-kind", "decay", "--stop-at-step", "2")[0] == 0
    before = sorted(p.name for p in out.rglob("*"))
    for flags, named in ((["--snapshot-kind", "average"], "--snapshot-kind"),
                         (["--snapshot-kind", "decay", "--snapshot-dtype", "float32"],
                          "--snapshot-dtype")):
        code, _, err = train(capsys, data, out, *flags)
        assert code == 2 and named in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.rglob("*")) == before


def test_snapshot_options_without_stages_are_refused(capsys, data, tmp_path):
    code, _, err = run_cli(capsys, "train-expert", "--data", data, "--out", tmp_path / "n",
                           "--year", "2013", "--snapshots", "none", "--max-steps", "2",
                           "--snapshot-dtype", "float32", "--device", "cpu")
    assert code == 2 and "--snapshot-dtype" in err and not (tmp_path / "n").exists()
    code, _, err = train(capsys, data, tmp_path / "d", "--snapshot-kind", "decay",
                         "--snapshot-average-fraction", "0.5")
    assert code == 2 and "--snapshot-average-fraction" in err


def test_bfloat16_snapshots_are_half_the_bytes_and_load_as_float32(capsys, data, tmp_path):
    for dtype in ("float32", "bfloat16"):
        assert train(capsys, data, tmp_path / dtype, "--snapshot-dtype", dtype)[0] == 0
    snap = "snapshots/2013-12-31"
    f32, b16 = tmp_path / "float32" / snap, tmp_path / "bfloat16" / snap
    with safe_open(str(b16 / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in list(f.keys())} == {"BF16"}
    size = {p: (p / "model.safetensors").stat().st_size for p in (f32, b16)}
    assert size[b16] < 0.51 * size[f32] + 4096
    # the bf16 file is the float32 snapshot rounded; loaded, it computes in float32
    info = read_run_info(b16)
    model = load_weights_into(GPT(info.model_config_, init_weights=False), b16)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name, value in tensors(f32).items():
        assert torch.equal(model.state_dict()[name], value.to(torch.bfloat16).float()), name
    # the final weights stay float32 (they are the resumable checkpoint's)
    assert all(v.dtype == torch.float32 for v in tensors(tmp_path / "bfloat16").values())


def test_an_open_slice_answers_with_its_average_at_its_own_cutoff(capsys, data, tmp_path):
    # 2017-2018 has data up to 2017 only: the average kind saves the 2017 average, and a
    # query as of 2017-12-31 uses it (as a run that goes on through 2018 would), not the
    # final weights; the float32 decay kind's final weights are its decay branch, so none
    # there.
    for kind in ("average", "decay"):
        assert train(capsys, data, tmp_path / kind, "--snapshot-kind", kind,
                     "--snapshot-dtype", "float32", year="2017")[0] == 0
    avg = read_run_info(tmp_path / "average")
    assert avg.snapshots == [{"data_cutoff": "2017-12-31", "path": "snapshots/2017-12-31"}]
    records = run_dir_artefacts(tmp_path / "average", avg)
    assert [r.candidates[0].name for r in records] == ["2017-12-31"]
    assert read_run_info(tmp_path / "decay").snapshots == []
    assert [r.candidates[0] for r in run_dir_artefacts(
        tmp_path / "decay", read_run_info(tmp_path / "decay"))] == [(tmp_path / "decay").resolve()]


# ------------------------------------------------------------- the proof, per kind

CUT = "2015-12-31"  # inside the 2015-2016 slice
KINDS = [("average", "bfloat16"), ("decay", "bfloat16"), ("average", "float32")]
MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "seq_len": 32}
# yearly stages (tests/test_counterfactual.py proves monthly ones of both kinds)
TRAIN = {"batch_size": 2, "steps_per_stage": 2, "device": "cpu", "log_every": 100,
         "eval_batches": 1, "cutoff_every": "year"}


@pytest.fixture(scope="module")
def proof_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds_proof")
    out = {}
    for until in (None, CUT):
        data = root / f"data-{until}"
        prepare_data(PrepareDataConfig(out=data, seq_len=32, val_fraction=0.3, workers=1,
                                       builtin_docs_per_year=12, end_year=2018, until=until))
        for kind, dtype in KINDS:
            experts = root / f"{until}-{kind}-{dtype}"
            for year in (2013, 2015):
                train_expert(TrainExpertConfig(year=year, data=data, out=experts / str(year),
                                               snapshot_kind=kind, snapshot_dtype=dtype,
                                               **MODEL, **TRAIN))
            out[(until, kind, dtype)] = (data, experts)
        # learned-avg and coadapt over the bf16 averaged experts, their router snapshots
        # (and coadapt's adapted experts) stored as bf16
        out[(until, "learned-avg")] = (data, train_router(TrainRouterConfig(
            experts=[root / f"{until}-average-bfloat16"], data=data,
            out=root / f"{until}-learned-avg", snapshot_dtype="bfloat16", **TRAIN)))
        # the router snapshots are stored as deltas from the previous one, and with
        # --adapted-weights blocks the adapted experts as deltas from their parent
        for adapted_weights in ("all", "blocks"):
            out[(until, "coadapt", adapted_weights)] = (data, coadapt(CoadaptConfig(
                experts=[root / f"{until}-average-bfloat16"], data=data,
                out=root / f"{until}-coadapt-{adapted_weights}", snapshot_dtype="bfloat16",
                adapted_weights=adapted_weights, **TRAIN)))
    return out


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _answers_as_of_cut(data: Path, model: Path):
    """Perplexity of the years up to D, every TSQA choice score and the artefacts used, as
    of D, of `model` (a folder of experts or a bundle) on `data`."""
    r = run_evaluate(EvaluateConfig(model=model, data=data, tsqa="builtin", query_date=CUT,
                                    device="cpu", batch_size=4, max_items=40))
    ppl = {y: v for y, v in r.report["perplexity"].items() if int(y) <= 2015}
    return ppl, r.tsqa.scores, r.report["artefacts_used"]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "dtype"), KINDS)
def test_each_kind_and_dtype_passes_the_counterfactual_test(proof_builds, kind, dtype):
    (full_data, full), (cut_data, cut) = (proof_builds[(None, kind, dtype)],
                                          proof_builds[(CUT, kind, dtype)])
    # Every snapshot with cutoff <= D: the same files, bitwise.
    compared = 0
    for folder in sorted(full.glob("*/snapshots/*")):
        if folder.name <= CUT:
            twin = cut / folder.relative_to(full)
            meta = json.loads((folder / "snapshot.json").read_text())
            assert (meta["kind"], meta["dtype"]) == (kind, dtype)
            names = ["model.safetensors", "run.json", "snapshot.json"]
            # (at D the cut run's own last-stage snapshot: a float32 decay snapshot
            # would be its final weights, which tests/test_counterfactual.py proves)
            for name in names:
                assert _sha(folder / name) == _sha(twin / name), (folder, name)
            compared += 1
    # a snapshot at every stage end with data (both slices), and the cut build has no
    # other snapshot <= D
    cut_names = {f.relative_to(cut) for f in cut.glob("*/snapshots/*") if f.name <= CUT}
    full_names = {f.relative_to(full) for f in full.glob("*/snapshots/*") if f.name <= CUT}
    assert compared == len(full_names) and full_names == cut_names
    assert {f.parts[0] for f in full_names} == {"2013", "2015"} and compared >= 2

    # The answers as of D over both experts' artefacts: perplexity, every TSQA choice
    # score, the artefacts used.
    a, b = _answers_as_of_cut(full_data, full), _answers_as_of_cut(cut_data, cut)
    assert a == b
    # 2015-2016 answers with its latest snapshot <= D (the last month with data)
    latest = max(f.name for f in full_names if f.parts[0] == "2015")
    assert {x["name"] for x in a[2]} == {"2013-2014@2014-12-31", f"2015-2016@{latest}"}


def _stored_as_bf16(path: Path) -> bool:
    """Whether the weights file `path` is a delta from its parent (asserting that every
    weight it stores, and every weight it resolves to, is bf16; a delta's row indices are
    int64)."""
    with safe_open(str(path), "pt") as f:
        delta = (f.metadata() or {}).get("delta") is not None
        dtypes = {k: f.get_slice(k).get_dtype() for k in list(f.keys())}
    assert {d for k, d in dtypes.items() if not k.endswith(".delta_rows")} <= {"BF16"}, path
    assert {d for k, d in dtypes.items() if k.endswith(".delta_rows")} <= {"I64"}, path
    assert {v.dtype for v in read_weights_file(path, "").values()} == {torch.bfloat16}, path
    return delta


def _same_bf16_router_snapshots(full: Path, cut: Path) -> None:
    """The router snapshots with cutoff <= D: bf16, and the same bytes in both builds;
    some stored as deltas from the previous snapshot."""
    routers = sorted(p for p in (full / "routers").iterdir() if p.name <= CUT)
    assert len(routers) >= 2 and {p.name for p in routers} == {
        p.name for p in (cut / "routers").iterdir() if p.name <= CUT}
    deltas = 0
    for folder in routers:
        twin = cut / folder.relative_to(full)
        assert _sha(folder / "router.safetensors") == _sha(twin / "router.safetensors"), folder
        deltas += _stored_as_bf16(folder / "router.safetensors")
    assert deltas >= 1


@pytest.mark.slow
def test_learned_avg_with_bfloat16_router_snapshots_passes_the_counterfactual_test(
        proof_builds):
    (full_data, full), (cut_data, cut) = proof_builds[(None, "learned-avg")], proof_builds[
        (CUT, "learned-avg")]
    _same_bf16_router_snapshots(full, cut)
    a, b = _answers_as_of_cut(full_data, full), _answers_as_of_cut(cut_data, cut)
    assert a == b
    assert any(x["name"].startswith("router@") for x in a[2])


@pytest.mark.slow
@pytest.mark.parametrize("adapted_weights", ["all", "blocks"])
def test_coadapt_with_bfloat16_adapted_experts_passes_the_counterfactual_test(
        proof_builds, adapted_weights):
    (full_data, full), (cut_data, cut) = (proof_builds[(None, "coadapt", adapted_weights)],
                                          proof_builds[(CUT, "coadapt", adapted_weights)])
    _same_bf16_router_snapshots(full, cut)
    adapted = sorted(p for p in (full / "experts").iterdir()
                     if p.name.split("@")[-1].split("+")[0] <= CUT) if (
        full / "experts").is_dir() else []
    assert adapted  # adapted experts with cutoff <= D: bf16, and the same bytes in both
    for folder in adapted:
        twin = cut / folder.relative_to(full)
        assert _sha(folder / "model.safetensors") == _sha(twin / "model.safetensors"), folder
        delta = _stored_as_bf16(folder / "model.safetensors")
        if adapted_weights == "blocks":  # a delta that does not store the token embedding
            with safe_open(str(folder / "model.safetensors"), "pt") as f:  # but the blocks
                stored, entry = set(f.keys()), json.loads(f.metadata()["delta"])
            assert delta and "wte.weight" in entry["inherited"]
            assert "blocks.0.attn.qkv.weight" in stored, "the blocks were not adapted"

    a, b = _answers_as_of_cut(full_data, full), _answers_as_of_cut(cut_data, cut)
    assert a == b
    assert any(x["name"].endswith("+adapted") for x in a[2])
    # By default a finished stage keeps only its metrics: no trainer checkpoint (optimizer
    # moments), no published weights (its adapted expert is in the bundle).
    stages = sorted((full / "stages").iterdir())
    # one stage per router snapshot, a period end each
    assert [st.name for st in stages] == sorted(p.name for p in (full / "routers").iterdir())
    assert len(stages) >= 4
    assert all(sorted(p.name for p in st.iterdir()) == ["metrics.jsonl"] for st in stages)


def test_a_decay_run_resumes_whatever_average_horizon_it_recorded(capsys, data, tmp_path):
    """The average's horizon does nothing to decay branches (and is refused as a flag
    with them), so a decay run recorded under another default of it (0.1, before 0.03)
    resumes; an averaged run with another horizon is refused, naming it."""
    for kind in ("decay", "average"):
        out = tmp_path / kind
        flags = ["--snapshot-kind", kind, "--snapshot-dtype", "float32"]
        assert train(capsys, data, out, *flags, "--stop-at-step", "2")[0] == 0
        saved = out / "config.yaml"
        text = saved.read_text()
        assert "snapshot_average_fraction: 0.03\n" in text
        saved.write_text(text.replace("snapshot_average_fraction: 0.03\n",
                                      "snapshot_average_fraction: 0.1\n"))
        code, _, err = train(capsys, data, out, *flags)
        if kind == "decay":
            assert code == 0, err
            assert json.loads((out / "run.json").read_text())["data_cutoff"] == "2014-12-31"
        else:
            assert code == 2 and "--snapshot-average-fraction (run has 0.1" in err, err


def test_a_single_run_recorded_under_the_earlier_defaults_resumes(capsys, data, tmp_path):
    """A --snapshots none run's config.yaml records the staged options it ignores, at
    the defaults of its version (yearly, decay, float32, 0.1): read back on a rerun, they
    are what the run did, not options typed to no effect, so it resumes."""
    out = tmp_path / "n"
    argv = ["train-expert", "--data", data, "--out", out, "--year", "2013", "--snapshots",
            "none", "--max-steps", "4", "--seq-len", "32", "--batch-size", "4", "--device",
            "cpu", "--log-every", "5"]
    assert run_cli(capsys, *argv, "--stop-at-step", "2")[0] == 0
    saved = out / "config.yaml"
    text = saved.read_text()
    for now, before in (("cutoff_every: month", "cutoff_every: year"),
                        ("snapshot_kind: average", "snapshot_kind: decay"),
                        ("snapshot_dtype: bfloat16", "snapshot_dtype: float32"),
                        ("snapshot_average_fraction: 0.03", "snapshot_average_fraction: 0.1")):
        assert f"\n{now}\n" in text
        text = text.replace(f"\n{now}\n", f"\n{before}\n")
    saved.write_text(text)
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert (out / "checkpoints" / "step-00000004").is_dir()
