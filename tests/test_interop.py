"""Export to transformers, import of the paper's GPTBase experts and GPT-2 folders, and
hf:ORG/NAME models read from a pre-filled local hub cache. Offline; tiny models
(vocab 50,304 so the GPT-2 tokenizer applies). About 15 s on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_expert_runs, run_cli
from safetensors.torch import load_file, save_file

from timoe_core.model.gpt import GPT, GPTConfig
from timoe_core.model.run_info import read_run_info
from timoe_core.model.weights import load_expert
from timoe_core.tokenizer import get_tokenizer

VOCAB = 50304
REAL = 50257
TEXT = "The prime minister of the United Kingdom is Theresa May, as of 2016's café."


def _ids() -> torch.Tensor:
    return torch.tensor([get_tokenizer().encode(TEXT)])


@pytest.fixture(scope="module")
def experts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("experts")
    return make_expert_runs(root, ["2013-2014", "2015-2016", "2017-2018"], vocab_size=VOCAB,
                            n_layer=2, scale=0.05)


# ---------------------------------------------------------------------- export


@pytest.mark.parametrize("bias", [True, False])
def test_export_hf_loads_in_transformers_with_the_same_log_probs(tmp_path, capsys, bias):
    transformers = pytest.importorskip("transformers")
    if bias:
        run = make_expert_runs(tmp_path / "runs", ["2015-2016"], vocab_size=VOCAB, n_layer=2,
                               scale=0.05)["2015-2016"]
    else:  # a model without biases exports with zero biases: the same function
        from timoe_core.model.run_info import RunInfo, write_run_info
        from timoe_core.model.weights import save_model_weights

        run = tmp_path / "runs" / "nobias"
        run.mkdir(parents=True)
        cfg = GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=32,
                        bias=False)
        save_model_weights(run, GPT(cfg))
        write_run_info(run, RunInfo(kind="expert", slice_label="2015-2016",
                                    start_date="2015-01-01", end_date="2016-12-31",
                                    model_config_=cfg, tokenizer=get_tokenizer().describe()))
    out = tmp_path / "hf"
    code, _, err = run_cli(capsys, "export", "--model", run, "--format", "hf", "--out", out)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["timoe"]["slice"] == "2015-2016"
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) != "0o600"

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok(TEXT)["input_ids"]
    assert ids == get_tokenizer().encode(TEXT)
    assert tok.decode(ids) == TEXT
    ours, _ = load_expert(run)
    x = torch.tensor([ids])
    with torch.no_grad():
        theirs = torch.log_softmax(hf(x).logits.float(), dim=-1)[..., :REAL]
        mine = ours.log_probs(x)[..., :REAL]
    assert (theirs - mine).abs().max().item() < 1e-4


def test_export_bundle_as_of_a_date_writes_the_usable_experts_and_a_readme(
        tmp_path, capsys, experts):
    root = next(iter(experts.values())).parent
    bundle = tmp_path / "bundle"
    assert run_cli(capsys, "train-router", "--strategy", "avg", "--experts", root,
                   "--out", bundle)[0] == 0
    out = tmp_path / "exported"
    code, _, err = run_cli(capsys, "export", "--model", bundle, "--query-date", "2016",
                                "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["2013-2014", "2015-2016"]
    readme = (out / "README.md").read_text()
    assert "2015-2016" in readme and "2017-2018" not in readme and "as of 2016" in readme
    # Each exported expert is its run dir's weights, renamed (wte is lm_head, stored once).
    st = load_file(str(out / "2015-2016" / "model.safetensors"))
    src = load_file(str(experts["2015-2016"] / "model.safetensors"))
    assert torch.equal(st["transformer.wte.weight"], src["wte.weight"])
    qkv = src["blocks.1.attn.qkv.weight"]
    assert torch.equal(st["transformer.h.1.attn.c_attn.weight"], qkv.t())
    assert "lm_head.weight" not in st


def test_export_refuses_a_nonempty_out_and_writes_nothing(tmp_path, capsys, experts):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run_cli(capsys, "export", "--model", experts["2013-2014"], "--out", out)
    assert code == 2 and "exists and is not an empty folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    code, _, err = run_cli(capsys, "export", "--model", experts["2017-2018"], "--query-date",
                           "2016", "--out", tmp_path / "new")
    assert code == 2 and "not usable as of --query-date 2016" in err
    assert not (tmp_path / "new").exists()


def test_export_writes_byte_identical_weights_each_time(tmp_path, capsys, experts):
    # the exported model.safetensors has a sorted header (checkpoint.save_safetensors):
    # two exports of one expert are the same bytes, so a checksum names the content
    for name in ("a", "b"):
        code, _, err = run_cli(capsys, "export", "--model", experts["2015-2016"], "--out",
                               tmp_path / name)
        assert code == 0, err
    a, b = ((tmp_path / n / "model.safetensors").read_bytes() for n in ("a", "b"))
    assert len(a) > 1000 and a == b


# ---------------------------------------------------------------------- import


def _gptbase_folder(folder: Path, model: GPT, *, store_lm_head: bool, **config_overrides):
    """A GPTBase checkpoint as the paper's code saves it (PyTorchModelHubMixin), written
    by hand from the layout: nn.Linear weights (out, in), lm_head tied to wte."""
    c = model.config
    folder.mkdir(parents=True)
    config = {"n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd,
              "vocab_size": c.vocab_size, "sequence_length": c.block_size, "bias": c.bias,
              "dropout": 0.0, "mlp_dim_exp_factor": 1.0, "model": "base", **config_overrides}
    (folder / "config.json").write_text(json.dumps(config))
    s = {"transformer.wte.weight": model.wte.weight, "transformer.wpe.weight": model.wpe.weight,
         "transformer.ln_f.weight": model.ln_f.weight, "transformer.ln_f.bias": model.ln_f.bias}
    for i, b in enumerate(model.blocks):
        h = f"transformer.h.{i}"
        for ours, theirs in ((b.ln_1, "ln_1"), (b.attn.qkv, "attn.c_attn"),
                             (b.attn.proj, "attn.c_proj"), (b.ln_2, "ln_2"),
                             (b.mlp.fc, "mlp.c_fc"), (b.mlp.proj, "mlp.c_proj")):
            s[f"{h}.{theirs}.weight"] = ours.weight
            s[f"{h}.{theirs}.bias"] = ours.bias
    if store_lm_head:
        s["lm_head.weight"] = model.wte.weight.clone()
    save_file({k: v.detach().clone().contiguous() for k, v in s.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("store_lm_head", [False, True])
def test_import_gptbase_evaluates_exactly_like_the_original(tmp_path, capsys, store_lm_head):
    torch.manual_seed(1)
    original = GPT(GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=2,
                             n_embd=32)).eval()
    src = tmp_path / "paper-expert"
    _gptbase_folder(src, original, store_lm_head=store_lm_head)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "import", "--format", "gptbase", "--source", src,
                           "--slice", "2015-2016", "--out", out)
    assert code == 0, err
    info = read_run_info(out)
    assert (info.slice_label, info.data_cutoff, info.kind) == ("2015-2016", "2016-12-31",
                                                               "expert")
    assert info.imported_from == f"gptbase:{src}"
    imported, _ = load_expert(out)
    with torch.no_grad():
        assert torch.equal(imported.log_probs(_ids()), original.log_probs(_ids()))
    # A stated cutoff is kept.
    run_cli(capsys, "import", "--format", "gptbase", "--source", src, "--slice", "2015-2016",
            "--data-cutoff", "2016-06", "--out", tmp_path / "run2")
    assert read_run_info(tmp_path / "run2").data_cutoff == "2016-06-30"


@pytest.mark.parametrize("override, message", [
    ({"mlp_dim_exp_factor": 2.0}, "mlp_dim_exp_factor 2.0"),
    ({"vocab_size": 32000}, "vocab_size 32000 is not GPT-2's vocab"),
    ({"n_layer": 3}, "transformer.h.2.ln_1.weight is missing"),
])
def test_import_refuses_what_timoe_cannot_compute(tmp_path, capsys, override, message):
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=16))
    src = tmp_path / "src"
    _gptbase_folder(src, model, store_lm_head=False, **override)
    code, _, err = run_cli(capsys, "import", "--format", "gptbase", "--source", src,
                           "--slice", "2015-2016", "--out", tmp_path / "run")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_import_refuses_an_untied_lm_head(tmp_path, capsys):
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16))
    src = tmp_path / "src"
    _gptbase_folder(src, model, store_lm_head=True)
    state = load_file(str(src / "model.safetensors"))
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    save_file(state, str(src / "model.safetensors"))
    code, _, err = run_cli(capsys, "import", "--format", "gptbase", "--source", src,
                           "--slice", "2015-2016", "--out", tmp_path / "run")
    assert code == 2 and "lm_head.weight differs from transformer.wte.weight" in err


def test_import_hf_reads_a_transformers_gpt2_and_matches_it(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=REAL, n_positions=64, n_embd=32, n_layer=2,
                                     n_head=2, activation_function="gelu")
    torch.manual_seed(2)
    hf = transformers.GPT2LMHeadModel(config).eval()
    src = tmp_path / "gpt2"
    hf.save_pretrained(src)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "import", "--format", "hf", "--source", src,
                           "--slice", "2019-2020", "--out", out)
    assert code == 0, err
    ours, _ = load_expert(out)
    with torch.no_grad():
        expected = torch.log_softmax(hf(_ids()).logits.float(), dim=-1)
        assert (ours.log_probs(_ids()) - expected).abs().max().item() < 1e-4
    # GPT-2's own tanh GELU is another function: refused, naming the field.
    config.activation_function = "gelu_new"
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gelu-new")
    code, _, err = run_cli(capsys, "import", "--format", "hf", "--source", tmp_path / "gelu-new",
                           "--slice", "2019-2020", "--out", tmp_path / "run2")
    assert code == 2 and "activation_function is 'gelu_new'" in err


def test_export_then_import_hf_round_trips_bitwise(tmp_path, capsys, experts):
    out = tmp_path / "hf"
    assert run_cli(capsys, "export", "--model", experts["2017-2018"], "--out", out)[0] == 0
    code, _, err = run_cli(capsys, "import", "--format", "hf", "--source", out, "--slice",
                           "2017-2018", "--out", tmp_path / "back")
    assert code == 0, err
    a = load_file(str(experts["2017-2018"] / "model.safetensors"))
    b = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------- hf: models


def _fill_hub_cache(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """The layout huggingface_hub keeps (models--ORG--NAME/{refs,snapshots}), by hand."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    for name, path in files.items():
        (snap / name).write_bytes(path.read_bytes())
    return snap


def _cli(args: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "timoe_cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, check=False,
                          cwd=Path(__file__).parents[1])


def test_hf_model_references_resolve_from_the_local_hub_cache_offline(tmp_path, experts):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    run = experts["2015-2016"]
    _fill_hub_cache(cache, "someone/timoe-2015", {n: run / n for n in
                                                  ("run.json", "model.safetensors")})
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache),
               HF_HOME=str(tmp_path / "home"), PYTHONPATH=str(Path(__file__).parents[1]))
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "The capital is", "choices": ["a", "b", "c", "d"],
                              "labels": ["correct", "past", "future", "irrelevant"],
                              "year": 2015}) + "\n")
    done = _cli(["evaluate", "--model", "hf:someone/timoe-2015", "--tsqa", qa, "--json",
                 tmp_path / "ev.json"], env)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "ev.json").read_text())["tsqa"]["n"] == 1
    missing = _cli(["evaluate", "--model", "hf:someone/absent", "--tsqa", qa], env)
    assert missing.returncode == 2
    assert "not in the local hub cache" in missing.stderr
    assert "hf download someone/absent" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
