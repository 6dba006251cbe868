"""The lm-evaluation-harness model `timoe`: offline, a local task YAML over a local
JSONL, tiny random experts. The adapter's scores are timoe's own TSQA scores of the
same items. About 20 s on 2 cores (lm-eval's import is most of it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

from helpers import LOCAL_QA_TASK_YAML, make_expert_runs, run_cli

from timoe_core.evaluate.harness import TimoeLM
from timoe_core.evaluate.models import load_evaluated_model
from timoe_core.evaluate.tsqa import load_tsqa, score_tsqa

LABELS = ["correct", "past", "future", "irrelevant"]
NAMES = ["Anna Berg", "Carl Dahl", "Eva Frost", "Gus Holm", "Ida Lind", "Jon Moe"]


def _items() -> list[dict]:
    out = []
    for k in range(8):
        year = 2014 + (k % 6)  # each year has an expert usable as of it (slice ends)
        answer = k % 4
        labels = [LABELS[(j - answer) % 4] for j in range(4)]
        out.append({"question": f"In {year} the mayor of Lorvik was",
                    "choices": [NAMES[(k + j) % 6] for j in range(4)], "answer": answer,
                    "labels": labels, "year": year})
    return out




@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    make_expert_runs(root / "experts", ["2013-2014", "2015-2016", "2017-2018"],
                     vocab_size=50304, n_embd=16, n_layer=1, scale=0.2)
    qa = root / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in _items()))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "local_qa.yaml").write_text(LOCAL_QA_TASK_YAML.format(name="timoe_local_qa", path=qa))
    return root, qa, tasks


class _Req:
    def __init__(self, context, continuation, doc):
        self.args, self.doc, self.task_name, self.doc_id = (context, continuation), doc, "t", 0


def test_adapter_loglikelihoods_are_timoes_tsqa_scores(setup):
    root, qa, _ = setup
    m = load_evaluated_model(root / "experts", device="cpu")
    items = load_tsqa(str(qa))
    ours = score_tsqa(m, items)
    lm = TimoeLM(m, date_field="year")
    reqs = [_Req(r["question"], " " + c, r) for r in _items() for c in r["choices"]]
    got = [ll for ll, _ in lm.loglikelihood(reqs)]
    want = [s for item_scores in ours.scores for s in item_scores]
    assert got == pytest.approx(want, abs=1e-6)
    with pytest.raises(Exception, match="no field 'when'"):
        TimoeLM(m, date_field="when").loglikelihood(reqs[:1])


@pytest.mark.parametrize("when", [["--lm-eval-date-field", "year"], ["--query-date", "2016"]])
def test_evaluate_folds_lm_eval_scores_equal_to_timoes_accuracy(setup, capsys, tmp_path, when):
    root, qa, tasks = setup
    out = tmp_path / "ev.json"
    code, stdout, err = run_cli(capsys, "evaluate", "--model", root / "experts", "--tsqa", qa,
                                "--lm-eval-tasks", "timoe_local_qa", "--lm-eval-include-path",
                                tasks, "--json", out, "--device", "cpu", *when)
    assert code == 0, err
    report = json.loads(out.read_text())
    scores = report["lm_eval"]["tasks"]["timoe_local_qa"]
    assert report["tsqa"]["n"] == 8
    if when[0] == "--query-date":
        assert report["lm_eval"]["query_date"] == "2016"
    assert scores["acc"] == pytest.approx(report["tsqa"]["accuracy"], abs=1e-12)
    assert "lm-evaluation-harness" in stdout


def test_unknown_task_and_missing_dates_are_clear(setup, capsys):
    root, qa, tasks = setup
    code, _, err = run_cli(capsys, "evaluate", "--model", root / "experts", "--lm-eval-tasks",
                           "no_such_task", "--lm-eval-include-path", tasks, "--device", "cpu")
    assert code == 2 and "unknown lm-eval task 'no_such_task'" in err
    code, _, err = run_cli(capsys, "evaluate", "--model", root / "experts", "--lm-eval-tasks",
                           "timoe_local_qa", "--lm-eval-include-path", tasks, "--device", "cpu")
    assert code == 2 and "give model_args query_date=YYYY" in err


def test_a_task_needing_a_hub_download_offline_says_how_to_run_it(setup, capsys, tmp_path,
                                                                   monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    root, _, _ = setup
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub.yaml").write_text(LOCAL_QA_TASK_YAML.replace(
        "dataset_path: json", "dataset_path: nobody/not-downloaded").format(
        name="timoe_hub_qa", path="x.jsonl"))
    code, _, err = run_cli(capsys, "evaluate", "--model", root / "experts", "--query-date",
                           "2016", "--lm-eval-tasks", "timoe_hub_qa", "--lm-eval-include-path",
                           tasks, "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "timoe_hub_qa" in err and "HF_DATASETS_OFFLINE=1" in err
    assert "--lm-eval-include-path" in err


def test_timoe_lm_eval_command_runs_the_timoe_model(setup, tmp_path):
    import os
    import subprocess
    import sys

    root, _, tasks = setup
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "timoe_cli.lm_eval", "--model", "timoe", "--model_args",
         f"model={root / 'experts'},date_field=year", "--device", "cpu", "--tasks",
         "timoe_local_qa",
         "--include_path", str(tasks), "--output_path", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    [result] = list((tmp_path / "out").rglob("results*.json"))
    acc = json.loads(result.read_text())["results"]["timoe_local_qa"]["acc,none"]
    m = load_evaluated_model(root / "experts", device="cpu")
    assert acc == pytest.approx(score_tsqa(m, load_tsqa(str(setup[1]))).accuracy, abs=1e-12)


def test_rolling_loglikelihood_and_generation_follow_the_model(setup):
    import torch

    from timoe_core.generate import generate_tokens
    from timoe_core.tokenizer import get_tokenizer

    root, _, _ = setup
    m = load_evaluated_model(root / "experts" / "2015-2016", device="cpu")  # one expert
    lm = TimoeLM(m)
    tok = get_tokenizer()
    text = "In 2016 the mayor of Lorvik was Anna Berg, " * 12  # longer than block_size 32
    ids = [tok.eot_token] + tok.encode(text)
    assert len(ids) > 2 * m.block_size
    # Reference: every token scored once, each window seeing up to block_size tokens before.
    want = 0.0
    with torch.inference_mode():
        for start in range(1, len(ids), m.block_size):
            end = min(start + m.block_size, len(ids))
            ctx_start = max(0, end - m.block_size - 1)
            x = torch.tensor([ids[ctx_start:end - 1]])
            y = torch.tensor([ids[ctx_start + 1:end]])
            lp = m.target_log_probs(x, y, None)[0]
            want += float(lp[-(end - start):].double().sum())
    [got] = lm.loglikelihood_rolling([_Req(text, None, {})])
    assert got == pytest.approx(want, rel=1e-6)

    class _Gen:
        args = ("In 2016 the mayor", {"until": ["\n"], "max_gen_toks": 5})
        doc, task_name, doc_id = {}, "t", 0

    [out] = lm.generate_until([_Gen()])
    ref = generate_tokens(m.gpt, [tok.eot_token] + tok.encode("In 2016 the mayor"),
                          max_new_tokens=5, greedy=True, eot_token=tok.eot_token)
    assert out == tok.decode(ref.tokens).split("\n")[0]
