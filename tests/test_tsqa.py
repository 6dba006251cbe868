"""Temporal QA: loading and validating TSQA items, scoring choices, error rates."""

from __future__ import annotations

import json
from datetime import date

import pytest
import torch

from timoe_core.errors import TimoeError
from timoe_core.evaluate.models import EvaluatedModel, SingleModel
from timoe_core.evaluate.tsqa import TSQAFields, load_tsqa, score_tsqa
from timoe_core.model.gpt import GPT, GPTConfig
from timoe_core.model.run_info import RunInfo
from timoe_core.timeslices import parse_query_date
from timoe_core.tokenizer import get_tokenizer

GPT2 = {"name": "gpt2", "vocab_size": 50257, "eot_token": 50256}
LABELS4 = ["correct", "past", "future", "irrelevant"]


def item(q="In 2016 the mayor of Lorvik was", choices=None, answer=0, labels=None, year=2016,
         **extra):
    rec = {"question": q, "choices": choices or [" Anna Berg", " Carl", " Eva Frost Holm",
                                                 " Gus"],
           "answer": answer, "labels": labels or list(LABELS4), "year": year}
    rec.update(extra)
    return rec


class TokenCostLM(EvaluatedModel):
    """log P(token) = -0.5 * (token % 5 + 1), whatever the context: scores are computable
    by hand. No expert before 2015; records the query dates it is asked with."""

    name = strategy = "token-cost"
    policy = "inclusive"
    block_size = 64
    vocab_size = 50304
    tokenizer = GPT2
    device = torch.device("cpu")
    dated = True

    def __init__(self):
        self.dates: list[date] = []

    def _target_log_probs(self, input_ids, targets, query_dates):
        dates = query_dates if isinstance(query_dates, list) else [query_dates] * len(targets)
        assert len(dates) == len(targets)
        self.dates += dates
        return -0.5 * (targets % 5 + 1).float()

    def eligible_experts(self, query_date=None):
        if query_date is not None and parse_query_date(query_date) < date(2015, 1, 1):
            raise TimoeError("no expert is eligible: the first query date with an eligible "
                             "expert is 2015-01-01")
        return ["2015-2016"]

    def loaded_experts(self):
        return ["2015-2016"]


def cost(text: str) -> float:
    return sum(-0.5 * (t % 5 + 1) for t in get_tokenizer().encode(text))


def write(tmp_path, records, name="qa.json"):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


# ------------------------------------------------------------------ scoring


def test_choice_scores_are_the_continuation_log_likelihoods(tmp_path):
    recs = [item(year=2015 + k % 8, answer=k % 4,
                 labels=[LABELS4[(j - k) % 4] for j in range(4)]) for k in range(12)]
    items = load_tsqa(str(write(tmp_path, recs)))
    res = score_tsqa(TokenCostLM(), items, batch_items=5)
    choices = recs[0]["choices"]
    want = [cost(c) for c in choices]
    lengths = [len(get_tokenizer().encode(c)) for c in choices]
    for scores, n in zip(res.scores, res.lengths):
        assert scores == pytest.approx(want, abs=1e-9)
        assert n == lengths
    raw = max(range(4), key=lambda i: want[i])
    norm = max(range(4), key=lambda i: want[i] / lengths[i])
    assert res.chosen == [raw] * 12 and res.chosen_norm == [norm] * 12


def test_accuracy_and_error_rates_sum_to_one(tmp_path):
    # The model always picks the same choice; which label that is rotates with the item.
    recs = [item(answer=k % 4, labels=[LABELS4[(j - k) % 4] for j in range(4)], year=2016)
            for k in range(10)]
    items = load_tsqa(str(write(tmp_path, recs)))
    res = score_tsqa(TokenCostLM(), items)
    picked = [items[k].labels[res.chosen[k]] for k in range(10)]
    assert res.accuracy == picked.count("correct") / 10
    for lab in ("past", "future", "irrelevant"):
        assert res.error_rates[lab] == picked.count(lab) / 10
    assert res.accuracy + sum(res.error_rates.values()) == pytest.approx(1.0)
    assert res.accuracy_norm + sum(res.error_rates_norm.values()) == pytest.approx(1.0)
    assert res.by_year[2016]["n"] == 10


def test_query_dates_are_item_years_unless_overridden(tmp_path):
    recs = [item(year=y) for y in (2013, 2015, 2018, 2024)]
    items = load_tsqa(str(write(tmp_path, recs)))
    lm = TokenCostLM()
    res = score_tsqa(lm, items, batch_items=2)
    # 2013 has no eligible expert: skipped with the reason, never scored.
    assert res.n == 3 and res.skipped == 1 and "2015-01-01" in res.skipped_reason
    assert sorted(set(lm.dates)) == [date(2015, 12, 31), date(2018, 12, 31), date(2024, 12, 31)]
    assert len(lm.dates) == 3 * 4  # all four choices of an item share its date
    lm = TokenCostLM()
    res = score_tsqa(lm, items, query_date="2016-06")
    assert res.n == 4 and set(lm.dates) == {date(2016, 6, 30)}
    with pytest.raises(TimoeError, match="2015-01-01"):
        score_tsqa(TokenCostLM(), items, query_date="2014")


def _memorising_gpt(sentence: str, steps: int = 30) -> SingleModel:
    tok = get_tokenizer()
    ids = [tok.eot_token] + tok.encode(sentence)
    cfg = GPTConfig(vocab_size=50304, block_size=32, n_layer=1, n_head=2, n_embd=32)
    torch.manual_seed(0)
    gpt = GPT(cfg)
    seq = torch.tensor((ids * (33 // len(ids) + 1))[:33]).unsqueeze(0)
    opt = torch.optim.AdamW(gpt.parameters(), lr=1e-2)
    for _ in range(steps):
        _, loss = gpt(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5, loss.item()
    info = RunInfo(kind="expert", slice_label="2015-2016", start_date="2015-01-01",
                   end_date="2016-12-31", model_config_=cfg, tokenizer=GPT2)
    return SingleModel(gpt.eval(), info, strategy="expert:2015-2016", name="memoriser")


def test_each_item_is_asked_as_of_its_own_day(tmp_path):
    recs = [item(date="2016-08-31"), item(year=2016), item(date="2016-08"),
            {k: v for k, v in item(date="2018-02-14").items() if k != "year"},
            item(year=2019, date="2019")]
    items = load_tsqa(str(write(tmp_path, recs)))
    # a year alone is its Dec 31; a partial date its period's end
    assert [(it.year, it.date) for it in items] == [
        (2016, "2016-08-31"), (2016, "2016-12-31"), (2016, "2016-08-31"), (2018, "2018-02-14"),
        (2019, "2019-12-31")]
    lm = TokenCostLM()
    res = score_tsqa(lm, items, batch_items=8)
    assert res.n == 5
    assert sorted(set(lm.dates)) == [date(2016, 8, 31), date(2016, 12, 31), date(2018, 2, 14),
                                     date(2019, 12, 31)]
    assert lm.dates.count(date(2016, 8, 31)) == 2 * 4  # two items, four choices each
    assert res.by_year[2016]["n"] == 3  # grouped by year as before


def _stale_example(tmp_path):
    """Ten items; TokenCostLM always picks the same choice index, and the labels put
    `past` or `correct` (or `future`) there by hand."""
    probe = load_tsqa(str(write(tmp_path, [item()], "probe.json")))
    pick = score_tsqa(TokenCostLM(), probe).chosen[0]

    def rec(picked: str, **dates):
        others = [lab for lab in LABELS4 if lab != picked]
        labels = others[:pick] + [picked] + others[pick:]
        return item(answer=labels.index("correct"), labels=labels, **dates)

    inside = {"since": "2016-07-13"}
    recs = ([rec("past", date="2016-07-31", **inside)] * 3  # stale: in the measure
            + [rec("correct", date="2016-11-30", **inside)] * 4
            + [rec("future", date="2016-09-30", **inside)]
            + [rec("past", date="2016-12-31", **inside),  # the year end: yearly knows it
               rec("past", date="2016-08-31", since="2015-05-01"),  # changed the year before
               rec("past", date="2016-08-31"),  # no known change
               rec("past", date="2016-06-30", since="2016-06-30"),  # the day itself counts
               # without an earlier value among the choices, no stale answer is possible
               item(date="2016-09-30", since="2016-07-13",
                    labels=["correct", "irrelevant", "future", "irrelevant"])])
    return load_tsqa(str(write(tmp_path, recs)))


def test_stale_answers_count_the_earlier_value_after_a_change_that_year(tmp_path):
    from timoe_core.evaluate.report import stale_cell, tsqa_table
    from timoe_core.evaluate.tsqa import asked_after_change

    items = _stale_example(tmp_path)
    assert [asked_after_change(it) for it in items] == [True] * 8 + [False] * 3 + [True, False]
    res = score_tsqa(TokenCostLM(), items)
    stale = res.after_change
    # 9 asked after a change that year: 3 + 1 (the day itself) chose the earlier value
    assert (stale["n"], stale["stale"], stale["counts"]) == (
        9, 4, {"correct": 4, "past": 4, "future": 1, "irrelevant": 0})
    assert stale["stale_rate"] == pytest.approx(4 / 9)
    # Wilson's 95% interval of 4/9, by hand: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    z, n, p = 1.959964, 9, 4 / 9
    centre, half = p + z * z / (2 * n), z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    want = ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n))
    assert stale["stale_interval"] == pytest.approx(want, abs=1e-6)
    assert stale["stale_interval"] == pytest.approx([0.1888, 0.7333], abs=1e-4)
    report = {"tsqa": res.to_dict()}
    assert report["tsqa"]["after_change"]["stale"] == 4
    assert stale_cell(report["tsqa"]) == "44.4% (4/9) [18.9, 73.3]"
    rows = tsqa_table(report)[1]
    assert rows[-1][:2] == ["after a change that year (past err: stale answers)", "9"]
    assert rows[-1][4] == "44.4% (4/9) [18.9, 73.3]"  # its past err is the stale rate
    # restricted to some items, the measure follows them
    assert res.restricted({0, 1, 2, 3}, "test").after_change["n"] == 4
    assert res.restricted({9, 10}, "test").after_change["n"] == 0
    assert stale_cell(res.restricted({9, 10}, "test").to_dict()) == "—"


def test_the_choice_that_is_the_training_text_wins():
    model = _memorising_gpt("The capital of Zorbia is Quintar.")
    from timoe_core.data.builtin import TSQAItem

    items = [
        TSQAItem(question="The capital of Zorbia is", year=2016, fact_id="zorbia",
                 choices=[" Paris.", " Berlin.", " Quintar.", " Madrid."], answer=2,
                 labels=["past", "future", "correct", "irrelevant"]),
        TSQAItem(question="The capital of Zorbia is", year=2015, fact_id="zorbia2",
                 choices=[" Quintar.", " the city of Paris.", " Rome.", " Zorbia."], answer=0,
                 labels=["correct", "past", "future", "irrelevant"]),
    ]
    res = score_tsqa(model, items)
    assert res.chosen == [2, 0] and res.chosen_norm == [2, 0]
    assert res.accuracy == 1.0 and res.accuracy_norm == 1.0
    assert res.error_rates == {"past": 0.0, "future": 0.0, "irrelevant": 0.0}


# ------------------------------------------------------------------ loading


def test_json_jsonl_and_wrapped_files_load_the_same(tmp_path):
    recs = [item(year=2016), item(year=2017, answer=3, labels=["past", "future", "irrelevant",
                                                              "correct"])]
    a = load_tsqa(str(write(tmp_path, recs)))
    b = load_tsqa(str(write(tmp_path, recs, "qa.jsonl")))
    (tmp_path / "w.json").write_text(json.dumps({"items": recs}))
    c = load_tsqa(str(tmp_path / "w.json"))
    assert a == b == c
    assert a[1].answer == 3 and a[1].year == 2017 and a[0].choices[0] == " Anna Berg"


def test_paper_style_records_with_choice_objects(tmp_path):
    """Choices as {text, label} objects, no answer index, a date string, other field names."""
    rec = {"prompt": "Who led Lorvik in 2019?", "date": "2019-05-01",
           "options": [{"text": "Anna", "label": "past"}, {"text": "Carl", "label": "correct"},
                       {"text": "Eva", "label": "future"}, {"text": "Gus", "label": "irrelevant"}]}
    path = write(tmp_path, [rec])
    fields = TSQAFields(question="prompt", choices="options", year="date")
    [it] = load_tsqa(str(path), fields=fields)
    assert it.answer == 1 and it.year == 2019
    assert it.labels == ["past", "correct", "future", "irrelevant"]
    assert it.choices == [" Anna", " Carl", " Eva", " Gus"]  # continuations get their space
    rec2 = item(answer="C", labels=["past", "future", "correct", "irrelevant"])
    [it2] = load_tsqa(str(write(tmp_path, [rec2], "b.json")))
    assert it2.answer == 2


@pytest.mark.parametrize(
    "bad, needle",
    [
        (item(choices=[" a", " b", " c"]), "item 1, field 'choices': has 3 choices, expected 4"),
        ({k: v for k, v in item().items() if k != "labels"}, "item 1, field 'labels': is missing"),
        (item(labels=["correct", "past", "future"]), "item 1, field 'labels': has 3 labels"),
        (item(labels=["correct", "past", "later", "irrelevant"]), "unknown label 'later'"),
        (item(answer=1), "item 1, field 'labels': exactly the answer (choice 1)"),
        (item(answer=7), "item 1, field 'answer'"),
        (item(year="soon"), "item 1, field 'year'"),
        ({k: v for k, v in item().items() if k != "question"}, "item 1, field 'question'"),
        ({k: v for k, v in item().items() if k != "year"}, "item 1, field 'year': is missing"),
        (item(date="2016-08-32"), "item 1, field 'date': must be a day"),
        (item(date="31/08/2016"), "item 1, field 'date': must be a day"),
        (item(date="2017-03-31"), "field 'date': 2017-03-31 is not in the item's year 2016"),
        (item(date="2016-08-31", since="2016-09-01"), "field 'since': 2016-09-01 is after"),
        (item(since="soon"), "item 1, field 'since': must be a day"),
    ],
)
def test_bad_items_name_the_item_and_the_field(tmp_path, bad, needle):
    path = write(tmp_path, [item(), bad])
    with pytest.raises(TimoeError) as e:
        load_tsqa(str(path))
    assert needle in str(e.value)
    assert str(path) in str(e.value)


def test_bad_sources(tmp_path):
    with pytest.raises(TimoeError, match="not builtin, hf:NAME or an existing"):
        load_tsqa(str(tmp_path / "missing.json"))
    (tmp_path / "x.jsonl").write_text(json.dumps(item()) + "\n{oops\n")
    with pytest.raises(TimoeError, match="line 2 is not JSON"):
        load_tsqa(str(tmp_path / "x.jsonl"))
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(TimoeError, match="holds no items"):
        load_tsqa(str(tmp_path / "e.json"))


def test_hf_source_goes_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, split=None):
        calls.append((name, split))
        rows = [item(year=2016), item(year=2020)]
        return rows if split else {"train": rows}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert len(load_tsqa("hf:someone/TSQA")) == 2
    assert len(load_tsqa("hf:someone/TSQA:test", max_items=1)) == 1
    assert calls == [("someone/TSQA", None), ("someone/TSQA", "test")]

    def broken(name, split=None):
        raise FileNotFoundError("Couldn't find dataset someone/none on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(TimoeError, match="cannot load TSQA dataset hf:someone/none"):
        load_tsqa("hf:someone/none")


def test_max_items_is_a_fixed_subsample(tmp_path):
    recs = [item(year=2013 + k % 12, fact_id=f"f{k}") for k in range(40)]
    path = str(write(tmp_path, recs))
    a = load_tsqa(path, max_items=7)
    b = load_tsqa(path, max_items=7)
    assert len(a) == 7 and [x.fact_id for x in a] == [x.fact_id for x in b]


def test_builtin_questions_validate():
    items = load_tsqa("builtin")
    assert items and all(len(it.choices) == 4 for it in items)


# ------------------------------------------ other schemas: field and label mapping


def _their_record(k: int) -> dict:
    """An item as another release might write it: other keys, other label values."""
    names = ["Anna Berg", "Carl Dahl", "Eva Frost", "Gus Holm"]
    kinds = ["gold", "earlier", "later", "unrelated"]
    order = [(j + k) % 4 for j in range(4)]
    return {"prompt": f"In {2015 + k} the mayor of Lorvik was", "when": 2015 + k,
            "options": [{"option": names[i], "kind": kinds[i]} for i in order]}


def _ours(rec: dict) -> dict:
    ours = {"gold": "correct", "earlier": "past", "later": "future", "unrelated": "irrelevant"}
    return {"question": rec["prompt"], "year": rec["when"],
            "choices": [o["option"] for o in rec["options"]],
            "labels": [ours[o["kind"]] for o in rec["options"]]}


MAPPING = {"question": "prompt", "choices": "options", "text": "option", "label": "kind",
           "year": "when"}
LABEL_MAP = {"correct": "gold", "past": "earlier", "future": "later", "irrelevant": "unrelated"}


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_mapped_fields_and_labels_read_like_our_own_schema(tmp_path, fmt):
    from timoe_core.evaluate.tsqa import tsqa_fields_for

    theirs = [_their_record(k) for k in range(6)]
    path = tmp_path / f"theirs.{fmt}"
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(theirs), path)
    else:
        write(tmp_path, theirs, path.name)
    fields = tsqa_fields_for(None, MAPPING, LABEL_MAP)
    got = load_tsqa(str(path), fields=fields)
    want = load_tsqa(str(write(tmp_path, [_ours(r) for r in theirs], "ours.json")))
    assert [(i.question, i.choices, i.answer, i.labels, i.year) for i in got] == [
        (i.question, i.choices, i.answer, i.labels, i.year) for i in want]
    res_a, res_b = score_tsqa(TokenCostLM(), got), score_tsqa(TokenCostLM(), want)
    assert res_a.scores == res_b.scores and res_a.error_rates == res_b.error_rates


def test_release_schema_preset_reads_the_card_shape(tmp_path):
    rec = {"question": "Who led Lorvik in 2021?", "year": 2021,
           "choices": [{"text": "Anna", "label": "past"}, {"text": "Carl", "label": "correct"},
                       {"text": "Eva", "label": "future"}, {"text": "Gus", "label": "irrelevant"}]}
    from timoe_core.evaluate.tsqa import tsqa_fields_for

    [it] = load_tsqa(str(write(tmp_path, [rec])), fields=tsqa_fields_for("tsqa-release"))
    assert (it.answer, it.year, it.labels[1]) == (1, 2021, "correct")


def test_duplicated_choice_texts_are_refused_naming_file_item_and_field(tmp_path):
    recs = [item(), item(choices=[" Anna", " Carl", " anna ".strip().title(), " Gus"])]
    path = write(tmp_path, recs)
    with pytest.raises(TimoeError) as err:
        load_tsqa(str(path))
    msg = str(err.value)
    assert str(path) in msg and "item 1, field 'choices'" in msg
    assert "choices 0 and 2 have the same text 'Anna'" in msg


@pytest.mark.parametrize("fields, labels, needle", [
    ({"prompt": "q"}, {}, "unknown part 'prompt'"),
    ({}, {"wrong": "x"}, "unknown label 'wrong'"),
    ({}, {"correct": "x", "past": "X"}, "one value to two labels"),
])
def test_bad_mappings_are_refused(fields, labels, needle):
    from timoe_core.evaluate.tsqa import tsqa_fields_for

    with pytest.raises(TimoeError, match=needle):
        tsqa_fields_for(None, fields, labels)


def test_cli_and_config_file_mappings_agree(tmp_path, capsys):
    from helpers import make_expert_runs, run_cli

    run = make_expert_runs(tmp_path / "runs", ["2015-2016"], vocab_size=50304, n_embd=16,
                           n_layer=1)["2015-2016"]
    qa = write(tmp_path, [_their_record(k) for k in range(2)])
    flags = [f"{k}={v}" for k, v in MAPPING.items()]
    argv = ["evaluate", "--model", run, "--tsqa", qa]
    for f in flags:
        argv += ["--tsqa-field", f]
    for k, v in LABEL_MAP.items():
        argv += ["--tsqa-label", f"{k}={v}"]
    code, _, err = run_cli(capsys, *argv, "--json", tmp_path / "a.json")
    assert code == 0, err
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"tsqa_field": MAPPING,
                                                     "tsqa_label": LABEL_MAP}))
    code, _, err = run_cli(capsys, "evaluate", "--model", run, "--tsqa", qa, "--config",
                           tmp_path / "c.yaml", "--json", tmp_path / "b.json")
    assert code == 0, err
    a, b = (json.loads((tmp_path / n).read_text())["tsqa"] for n in ("a.json", "b.json"))
    assert a == b and a["n"] == 2
    code, _, err = run_cli(capsys, "evaluate", "--model", run, "--tsqa", qa,
                           "--tsqa-field", "choices")
    assert code == 2 and "--tsqa-field: 'choices': expected NAME=VALUE" in err
    code, _, err = run_cli(capsys, "evaluate", "--model", run, "--tsqa", qa)
    assert code == 2 and "field 'question': is missing" in err and str(qa) in err
