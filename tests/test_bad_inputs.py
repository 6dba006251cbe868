"""Bad input across the CLI: each is exit 2, one line on stderr naming the problem and
the fix, no traceback, nothing written. docs/bad-inputs.md catalogues every case the
CLI handles with the test that covers it; a test here keeps that catalogue true.

Also: the config loader and the JSONL reader fuzzed with hypothesis, where the only
failure allowed is a clean TimoeError (exit 2 from the CLI).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import make_data_dir, make_expert_runs, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timoe_core.config import (
    EvaluateConfig,
    GenerateConfig,
    PrepareDataConfig,
    TrainExpertConfig,
    TrainRouterConfig,
    resolve_config,
)
from timoe_core.data.batches import SourceOptions
from timoe_core.data.sources import open_source
from timoe_core.errors import TimoeError

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "docs" / "bad-inputs.md"


# ------------------------------------------------------------------- the cases


@dataclass
class Ctx:
    tmp: Path  # a fresh folder per case; everything the case writes goes here
    data: Path  # a valid data dir (vocab 512, years 2013-2014)
    run: Path  # a valid expert run dir (2013-2014, vocab 128)

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.tmp / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        return p

    def copy_run(self) -> Path:
        return Path(shutil.copytree(self.run, self.tmp / "run-copy"))

    def copy_data(self) -> Path:
        return Path(shutil.copytree(self.data, self.tmp / "data-copy"))


def _train(ctx: Ctx, *extra) -> list:
    return ["train-expert", "--year", "2013", "--data", ctx.data, "--out", ctx.tmp / "out",
            "--seq-len", "32", "--max-steps", "2", "--snapshots", "none", "--device", "cpu",
            *extra]  # fmt: skip


def _train_on(data: Path, ctx: Ctx) -> list:
    return ["train-expert", "--year", "2013", "--data", data, "--out", ctx.tmp / "out",
            "--seq-len", "32", "--max-steps", "2", "--snapshots", "none",
            "--device", "cpu"]  # fmt: skip


def _train_out(out: Path, ctx: Ctx) -> list:
    args = _train(ctx)
    args[args.index("--out") + 1] = out
    return args


def _folder_without_corpus_files(ctx: Ctx) -> list:
    src = ctx.tmp / "src"
    src.mkdir()
    (src / "notes.txt").write_text("not a corpus file", encoding="utf-8")
    return ["prepare-data", "--source", src, "--out", ctx.tmp / "out"]


def _unwritable(ctx: Ctx) -> Path:
    """A folder this process cannot create files in: chmod 555, or /sys for root."""
    locked = ctx.tmp / "locked"
    locked.mkdir(mode=0o555)
    for d in (locked, Path("/sys")):
        try:
            (d / ".probe").touch()
        except OSError:
            return d
        (d / ".probe").unlink()
    pytest.skip("no unwritable folder on this machine")


def _run_json_corrupt(ctx: Ctx) -> list:
    run = ctx.copy_run()
    (run / "run.json").write_text('{"kind": "expert", ', encoding="utf-8")
    return ["generate", "--model", run, "--prompt", "x", "--device", "cpu"]


def _weights_mismatch(ctx: Ctx) -> list:
    run = ctx.copy_run()
    info = json.loads((run / "run.json").read_text())
    info["model_config"]["n_embd"] = 64
    (run / "run.json").write_text(json.dumps(info))
    return ["generate", "--model", run, "--prompt", "x", "--device", "cpu"]


def _router_mismatch(ctx: Ctx) -> list:
    from timoe_core.model.mixture import TiMoE

    bundle = ctx.tmp / "bundle"
    TiMoE.from_expert_dirs([ctx.run], strategy="learned-avg").save_bundle(bundle)
    spec = json.loads((bundle / "timoe.json").read_text())
    spec["router"]["hidden_dim"] *= 2  # timoe.json edited; router.safetensors unchanged
    (bundle / "timoe.json").write_text(json.dumps(spec))
    return ["generate", "--model", bundle, "--query-date", "2014", "--prompt", "x"]


def _manifest_corrupt(ctx: Ctx) -> list:
    data = ctx.copy_data()
    (data / "manifest.json").write_text("{not json", encoding="utf-8")
    return _train_on(data, ctx)


def _data_format_1(ctx: Ctx) -> list:
    """A data dir prepared before the per-document dates (format 1)."""
    data = ctx.copy_data()
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["format_version"] = 1
    (data / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return _train_on(data, ctx)


def _token_file_missing(ctx: Ctx) -> list:
    data = ctx.copy_data()
    (data / "val" / "2014.bin").unlink()
    return _train_on(data, ctx)


def _token_file_changed(ctx: Ctx) -> list:
    data = ctx.copy_data()
    f = data / "train" / "2014.bin"
    blob = bytearray(f.read_bytes())
    blob[0] ^= 1  # same size: only the sha256 check sees it
    f.write_bytes(bytes(blob))
    return _train_on(data, ctx)


# (id, argv builder, words stderr must hold, environment)
CASES: list[tuple[str, Callable[[Ctx], list], list[str], dict[str, str]]] = [
    # config files (every command reads them the same way)
    ("config-missing", lambda c: _train(c, "--config", c.tmp / "nope.yaml"),
     ["nope.yaml does not exist", "--config"], {}),
    ("config-suffix", lambda c: _train(c, "--config", c.file("c.ini", "x = 1")),
     ["must end in .yaml, .yml, .toml or .json"], {}),
    ("config-yaml-syntax", lambda c: _train(c, "--config", c.file("c.yaml", "a: [1\n")),
     ["c.yaml is not valid"], {}),
    ("config-toml-syntax", lambda c: _train(c, "--config", c.file("c.toml", "max_steps = \n")),
     ["c.toml is not valid", "line 1"], {}),
    ("config-not-a-mapping", lambda c: _train(c, "--config", c.file("c.yaml", "- a\n- b\n")),
     ["must hold a mapping of option: value"], {}),
    ("config-unknown-key", lambda c: _train(c, "--config", c.file("c.yaml", "max_stpes: 3\n")),
     ["--max-stpes: Extra inputs are not permitted"], {}),
    ("config-wrong-type",
     lambda c: ["prepare-data", "--config", c.file("c.toml", 'seq_len = "long"\n'), "--out",
                c.tmp / "out"],
     ["--seq-len: Input should be a valid integer", "'long'"], {}),
    ("config-not-utf8", lambda c: _train(c, "--config", c.file("c.yaml", b"\xff\xfe\x00")),
     ["is not UTF-8 text", "save it as UTF-8"], {}),
    ("config-out-of-range", lambda c: _train(c, "--config", c.file("c.yaml", "lr: -1\n")),
     ["--lr: Input should be greater than 0"], {}),
    ("config-schedule-over-1",
     lambda c: _train(c, "--warmup-fraction", "0.6", "--decay-fraction", "0.6"),
     ["warmup_fraction + decay_fraction must be at most 1"], {}),
    # usage
    ("unknown-option", lambda c: _train(c, "--max-stepz", "3"),
     ["No such option: --max-stepz", "--max-steps", "--help"], {}),
    ("not-a-number", lambda c: _train(c, "--batch-size", "many"),
     ["Invalid value for '--batch-size'"], {}),
    ("unknown-command", lambda c: ["trian-expert"], ["No such command 'trian-expert'"], {}),
    # train-expert
    ("out-is-a-file", lambda c: _train_out(c.file("f", "x"), c),
     ["is a file, not a folder", "--out"], {}),
    ("out-under-a-file", lambda c: _train_out(c.file("f", "x") / "run", c),
     ["is a file, not a folder", "--out"], {}),
    ("max-steps-zero", lambda c: _train(c, "--max-steps", "0"),
     ["--max-steps: Input should be greater than or equal to 1"], {}),
    ("manifest-corrupt", _manifest_corrupt, ["manifest.json is corrupt", "prepare the data again"],
     {}),
    ("data-format-1", _data_format_1,
     ["holds data format 1", "prepare it again", "timoe prepare-data --source SRC", "--overwrite"],
     {}),
    ("token-file-missing", _token_file_missing,
     ["val/2014.bin named in the manifest is missing"], {}),
    ("token-file-changed-sha256", _token_file_changed,
     ["train/2014.bin fails its sha256 check"], {"TIMOE_VERIFY_DATA": "sha256"}),
    ("verify-mode-unknown", lambda c: _train(c), ["TIMOE_VERIFY_DATA='all' must be"],
     {"TIMOE_VERIFY_DATA": "all"}),
    # evaluate / generate
    ("evaluate-model-missing",
     lambda c: ["evaluate", "--model", c.tmp / "nope", "--tsqa", "builtin"],
     ["model", "nope does not exist", "give a TiMoE bundle"], {}),
    ("evaluate-data-missing",
     lambda c: ["evaluate", "--model", c.run, "--data", c.tmp / "nodata", "--device", "cpu"],
     ["nodata does not exist", "timoe prepare-data"], {}),
    ("evaluate-tsqa-missing",
     lambda c: ["evaluate", "--model", c.run, "--tsqa", c.tmp / "qa.json", "--device", "cpu"],
     ["is not builtin, hf:NAME or an existing .json/.jsonl file"], {}),
    ("evaluate-query-date-words",
     lambda c: ["evaluate", "--model", c.run, "--tsqa", "builtin", "--query-date", "yesterday"],
     ["bad query date 'yesterday'", "YYYY-MM-DD"], {}),
    ("evaluate-expert-year-not-covered",
     lambda c: ["evaluate", "--model", c.run, "--strategy", "expert:1999", "--tsqa", "builtin"],
     ["does not cover 1999"], {}),
    ("generate-max-new-tokens-zero",
     lambda c: ["generate", "--model", c.run, "--prompt", "x", "--max-new-tokens", "0"],
     ["--max-new-tokens: Input should be greater than or equal to 1"], {}),
    ("generate-run-json-corrupt", _run_json_corrupt, ["run.json is corrupt"], {}),
    ("generate-weights-do-not-match-config", _weights_mismatch,
     ["does not match the model config in run.json",
      "wte.weight has shape (128, 32), the config gives (128, 64)"], {}),
    ("generate-router-does-not-match-bundle", _router_mismatch,
     ["router.safetensors does not match the model config in timoe.json", "fc.weight has shape",
      "rebuild the bundle"], {}),
    # prepare-data
    ("prepare-hf-without-name",
     lambda c: ["prepare-data", "--source", "hf:", "--out", c.tmp / "out"],
     ["names no dataset: use hf:NAME[:CONFIG]"], {}),
    ("prepare-folder-without-corpus-files", _folder_without_corpus_files,
     ["holds no .jsonl, .json, .csv or .parquet files"], {}),
    ("prepare-merge-missing",
     lambda c: ["prepare-data", "--merge", c.tmp / "nope", "--out", c.tmp / "out"],
     ["nope does not exist"], {}),
    ("evaluate-json-unwritable",
     lambda c: ["evaluate", "--model", c.run, "--tsqa", "builtin", "--json",
                _unwritable(c) / "report.json"],
     ["--json", "report.json is not writable", "Permission denied"], {}),
    # train-router / coadapt / demo
    ("router-without-data",
     lambda c: ["train-router", "--strategy", "learned-avg", "--experts", c.run.parent,
                "--out", c.tmp / "out"],
     ["--data DATA_DIR is required"], {}),
    ("coadapt-experts-missing",
     lambda c: ["coadapt", "--experts", c.tmp / "nope", "--data", c.data, "--out",
                c.tmp / "out"],
     ["--experts", "nope does not exist"], {}),
    ("demo-out-is-a-file", lambda c: ["demo", "--out", c.file("f", "x")],
     ["is a file: give a folder"], {}),
    # checked up front by the one output check (io.check_output_path)
    ("router-avg-out-unwritable",
     lambda c: ["train-router", "--strategy", "avg", "--experts", c.run.parent, "--out",
                _unwritable(c) / "bundle"],
     ["bundle", "is not writable", "choose another --out"], {}),
]  # fmt: skip


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    data = make_data_dir(root, vocab_size=512, seq_len=32)
    runs = make_expert_runs(root / "runs", ["2013-2014"], vocab_size=128)
    return data, runs["2013-2014"]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input_is_exit_2_one_line_and_writes_nothing(
    fixed, tmp_path, capsys, monkeypatch, case
):
    _, build, words, env = case
    ctx = Ctx(tmp_path, *fixed)
    args = build(ctx)
    before = sorted(tmp_path.rglob("*"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, not even a temp file
    assert not list(fixed[1].parent.rglob("*.tmp"))


# ------------------------------------------------------------------- fuzzing

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_FIELDS = ["year", "data", "out", "max_steps", "max-steps", "lr", "seq_len", "device", "seed",
           "source", "val_fraction", "batch_size", "amp", "experts", "merge", "query_date",
           "strategy", "top_k", "policy", "warmup_fraction"]  # fmt: skip
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**305, max_value=10**320)  # beyond a float
    | st.floats()
    | st.text(max_size=12)
    | st.dates()
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_MODELS = (TrainExpertConfig, TrainRouterConfig, PrepareDataConfig, EvaluateConfig,
           GenerateConfig)  # fmt: skip


def _resolve_all(path: Path) -> None:
    for model in _MODELS:
        try:
            resolve_config(model, path, {})
        except TimoeError:
            pass  # the one failure allowed


@pytest.fixture(scope="module")
def fuzz_dir():
    d = Path(tempfile.mkdtemp(prefix="timoe-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@FUZZ
@given(
    suffix=st.sampled_from([".yaml", ".yml", ".toml", ".json"]),
    text=st.text(max_size=200) | st.binary(max_size=120),
)
def test_fuzz_config_files_from_raw_text(fuzz_dir, suffix, text):
    path = fuzz_dir / f"config{suffix}"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _resolve_all(path)


@FUZZ
@given(
    values=st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=8), _values, max_size=6),
    as_toml=st.booleans(),
)
def test_fuzz_config_files_from_structured_values(fuzz_dir, values, as_toml):
    if as_toml:
        path = fuzz_dir / "config.toml"
        path.write_text(_to_toml(values), encoding="utf-8", errors="surrogatepass")
    else:
        path = fuzz_dir / "config.yaml"
        path.write_text(yaml.safe_dump(values), encoding="utf-8", errors="surrogatepass")
    _resolve_all(path)


def _to_toml(values: dict) -> str:
    """A rough TOML rendering (JSON values are close to TOML's): valid or not, it must
    never crash the loader."""
    lines = []
    for k, v in values.items():
        lines.append(f"{json.dumps(k)} = {json.dumps(v, default=str)}")
    return "\n".join(lines) + "\n"


_row_values = st.one_of(
    _values,
    st.dictionaries(st.sampled_from(["text", "date", "other"]), _values, max_size=3),
    st.fixed_dictionaries({"text": st.text(max_size=30) | st.none() | st.integers(),
                           "date": _scalars}),
)  # fmt: skip


@FUZZ
@given(rows=st.lists(_row_values, max_size=6), skip_bad_rows=st.booleans())
def test_fuzz_jsonl_reader_with_json_rows(fuzz_dir, rows, skip_bad_rows):
    path = fuzz_dir / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r, default=str) for r in rows), encoding="utf-8",
                    errors="surrogatepass")  # fmt: skip
    _read_all(path, skip_bad_rows)


@FUZZ
@given(raw=st.binary(max_size=300), skip_bad_rows=st.booleans(), gz=st.booleans())
def test_fuzz_jsonl_reader_with_raw_bytes(fuzz_dir, raw, skip_bad_rows, gz):
    path = fuzz_dir / ("raw.jsonl.gz" if gz else "raw.jsonl")
    path.write_bytes(raw)  # a .gz of random bytes: a corrupt archive
    _read_all(path, skip_bad_rows)


def _read_all(path: Path, skip_bad_rows: bool) -> None:
    try:
        for batch in open_source(str(path), SourceOptions(skip_bad_rows=skip_bad_rows)).batches():
            assert len(batch.texts) == len(batch.years)
            assert all(isinstance(y, int) and 1 <= y <= 9999 for y in batch.years)
    except TimoeError:
        pass


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(text=st.text(max_size=120))
def test_fuzz_a_config_through_the_cli_is_exit_0_or_2(fuzz_dir, capsys, text):
    # The whole path a user takes: a junk config can only be a clean exit 2 (a config
    # that happens to be valid still lacks a data dir: exit 2 as well).
    path = fuzz_dir / "cli.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    code, _, err = run_cli(capsys, "train-expert", "--config", path, "--out",
                           fuzz_dir / "never-written", "--device", "cpu")  # fmt: skip
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (fuzz_dir / "never-written").exists()


# --------------------------------------------------------------- the catalogue

_ROW = re.compile(r"^\|(.+)\|\s*$")
_TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[([^\]]+)\])?`")


def catalogue_rows() -> list[list[str]]:
    rows = []
    for line in CATALOGUE.read_text(encoding="utf-8").splitlines():
        m = _ROW.match(line.strip())
        if not m:
            continue
        cells = [c.strip() for c in m.group(1).split("|")]
        if cells[0].lower() == "command" or set(cells[0]) <= set("-: "):
            continue  # the header and its rule
        rows.append(cells)
    return rows


def test_the_catalogue_lists_at_least_30_bad_inputs_across_every_command():
    rows = catalogue_rows()
    assert len(rows) >= 30, len(rows)
    commands = {r[0].strip("`") for r in rows}
    for c in ("prepare-data", "train-expert", "train-router", "coadapt", "evaluate",
              "generate", "config file"):  # fmt: skip
        assert any(c in x for x in commands), (c, commands)
    for r in rows:
        assert len(r) == 4 and all(r), r  # command | input | message | test
        assert _TEST_REF.search(r[3]), f"row without a tests/file.py::name reference: {r}"


def test_every_test_the_catalogue_names_exists():
    missing = []
    for row in catalogue_rows():
        for path, name, param in _TEST_REF.findall(row[3]):
            f = REPO / path
            text = f.read_text(encoding="utf-8") if f.is_file() else ""
            if not re.search(rf"^def {name}\(", text, re.MULTILINE):
                missing.append(f"{path}::{name}")
            elif param and param not in text:  # a parametrize id is spelled in the file
                missing.append(f"{path}::{name}[{param}]")
    assert not missing, missing


def test_every_case_here_is_in_the_catalogue():
    text = CATALOGUE.read_text(encoding="utf-8")
    absent = [
        name for name, *_ in CASES
        if f"test_bad_inputs.py::test_cli_bad_input_is_exit_2_one_line_and_writes_nothing[{name}]"
        not in text
    ]  # fmt: skip
    assert not absent, absent
