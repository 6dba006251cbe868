"""`timoe export --format hf`: timoe experts as folders `transformers` opens offline.

Each exported model is a GPT2LMHeadModel folder: `config.json`, `model.safetensors`
(GPT-2 names, lm_head tied to wte and stored once) and the GPT-2 tokenizer files
(`vocab.json`, `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`), so

    AutoModelForCausalLM.from_pretrained(DIR); AutoTokenizer.from_pretrained(DIR)

work without network. `config.json` keeps timoe's vocab (50,304: GPT-2's 50,257
tokens padded for speed); the padding rows are never a token, and over the 50,257
real tokens the log-probs equal timoe's (to float rounding).

A TiMoE bundle (or a folder of expert run dirs) has no transformers equivalent: the
mixture is a log-space combination, the router a timoe module. Exporting one writes
each expert usable as of `--query-date` (every expert without one) into a sub-folder
named by its slice, and a README.md listing them and how timoe combines them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from timoe_core import __version__
from timoe_core.config import ExportConfig, save_config
from timoe_core.data.manifest import sha256_file
from timoe_core.errors import TimoeError
from timoe_core.io import (
    atomic_write_json,
    atomic_write_text,
    check_output_path,
    chmod_default,
    read_metadata,
)
from timoe_core.lock import output_lock
from timoe_core.model.gpt import GPT
from timoe_core.model.gpt2_layout import EOT_TOKEN, hf_gpt2_config, to_gpt2_state
from timoe_core.model.hub import resolve_model_path
from timoe_core.model.point_in_time import DEFAULT_POLICY, canonical_policy, is_usable
from timoe_core.model.run_info import RUN_INFO_FILENAME, RunInfo, read_run_info
from timoe_core.model.weights import load_expert, save_safetensors
from timoe_core.timeslices import parse_query_date
from timoe_core.tokenizer import ENCODER_FILENAME, EOT_TEXT, GPT2_FILES_DIR, MERGES_FILENAME

HF_WEIGHTS_FILENAME = "model.safetensors"
HF_CONFIG_FILENAME = "config.json"
README_FILENAME = "README.md"


@dataclass
class ExportedModel:
    label: str  # the slice ("2015-2016"), or "dense 2013-2024"
    folder: Path  # relative to the export's root ("." for a single model)
    info: RunInfo
    weights_sha256: str


def write_gpt2_tokenizer_files(out: Path, block_size: int) -> None:
    """The GPT-2 tokenizer, as transformers reads it: the packaged BPE files under the
    names GPT2Tokenizer expects, and its special tokens (EOT is bos, eos and unk)."""
    shutil.copyfile(GPT2_FILES_DIR / ENCODER_FILENAME, out / "vocab.json")
    shutil.copyfile(GPT2_FILES_DIR / MERGES_FILENAME, out / "merges.txt")
    for name in ("vocab.json", "merges.txt"):
        chmod_default(out / name, 0o666)
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    atomic_write_json(out / "special_tokens_map.json", special)
    atomic_write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size,
        "add_prefix_space": False, "add_bos_token": False, **special,
    })


def export_gpt_hf(model: GPT, info: RunInfo, out: Path) -> str:
    """One GPT as a GPT2LMHeadModel folder in `out` (which exists); the weights' sha256."""
    config = model.config
    timoe_meta = {
        "kind": info.kind, "slice": info.slice_label, "start_date": info.start_date,
        "end_date": info.end_date, "data_cutoff": info.data_cutoff or info.end_date,
        "timoe_version": __version__,
    }
    state = to_gpt2_state(model.state_dict(), config, conv1d=True)
    weights = out / HF_WEIGHTS_FILENAME
    save_safetensors(state, weights, metadata={"format": "pt"})  # byte-reproducible
    chmod_default(weights, 0o666)
    atomic_write_json(out / HF_CONFIG_FILENAME, hf_gpt2_config(config, timoe=timoe_meta))
    write_gpt2_tokenizer_files(out, config.block_size)
    return sha256_file(weights)


def _models_to_export(path: Path, query_date: str | None, policy: str | None
                      ) -> list[tuple[str, GPT, RunInfo]]:
    """(folder name, model, run info) of each model to export; "" for a single model."""
    if not path.is_dir():
        raise TimoeError(f"--model {path} is not a folder: give a run dir, a TiMoE bundle or a "
                         "folder of expert run dirs")
    if (path / RUN_INFO_FILENAME).is_file():
        if query_date is not None:
            info = read_run_info(path)
            when, rule = parse_query_date(query_date), canonical_policy(policy or DEFAULT_POLICY)
            if not is_usable(info, when, rule):
                raise TimoeError(
                    f"--model {path} is the model of {info.slice_label}, not usable as of "
                    f"--query-date {query_date} (policy {rule}; its data cutoff is "
                    f"{info.cutoff.isoformat()})"
                )
        model, info = load_expert(path)
        return [("", model, info)]
    from timoe_core.config import MixtureOptions
    from timoe_core.model.bundle import BUNDLE_FILENAME
    from timoe_core.model.mixture import TiMoE

    if (path / BUNDLE_FILENAME).is_file():
        mix = TiMoE.from_bundle(path)
        if policy is not None:
            mix.policy = policy
    else:
        runs = sorted(p for p in path.iterdir() if (p / RUN_INFO_FILENAME).is_file())
        runs = [p for p in runs if read_run_info(p).kind == "expert"]
        if not runs:
            raise TimoeError(f"--model {path} is not a run dir, a TiMoE bundle (no "
                             f"{BUNDLE_FILENAME}) or a folder of expert run dirs")
        mix = TiMoE.from_expert_dirs(runs, strategy="avg",
                                     options=MixtureOptions(policy=policy) if policy else None)
    if query_date is not None:  # exactly the artefacts (e.g. snapshots) usable then
        mix = mix.as_of(parse_query_date(query_date))
        slices = mix.eligible_experts(parse_query_date(query_date))
    else:
        slices = sorted(mix.slices)
    return [(s.label, mix.expert(s), mix.run_infos[s.label]) for s in slices]


def _readme(source: str, query_date: str | None, policy: str, exported: list[ExportedModel],
            strategy: str) -> str:
    when = (f"usable as of {query_date} (policy {policy})" if query_date
            else "every expert (no --query-date)")
    lines = [
        f"# TiMoE experts exported from {source}",
        "",
        f"The experts of this {strategy} mixture {when}, each a transformers "
        "`GPT2LMHeadModel` folder (`AutoModelForCausalLM.from_pretrained(FOLDER)`, "
        "`AutoTokenizer.from_pretrained(FOLDER)`).",
        "",
        "| folder | slice | first day | last day | data cutoff | weights sha256 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in exported:
        lines.append(f"| `{e.folder}` | {e.label} | {e.info.start_date} | {e.info.end_date} | "
                     f"{e.info.data_cutoff or e.info.end_date} | `{e.weights_sha256[:16]}` |")
    lines += [
        "",
        "timoe combines them in log-probability space, "
        "`log P(x) = logsumexp_k(log w_k + log P_k(x))`, with equal weights (avg) or a "
        "router's weights (learned-avg, coadapt); the router is a timoe module and is not "
        "exported. Each folder alone is one slice's expert. The models keep timoe's vocab "
        "of 50,304 rows (GPT-2's 50,257 tokens, padded): ids 50257 and up are never "
        "tokens.",
        "",
    ]
    return "\n".join(lines)


def export_model(cfg: ExportConfig) -> list[ExportedModel]:
    """Export as `cfg` says; everything is written into a staging folder beside `--out`
    and renamed onto it at the end, so a failure leaves nothing behind."""
    if cfg.out is None:
        return _export_model(cfg)  # the error naming what is missing
    with output_lock(check_output_path(cfg.out, "--out")):  # one writer per output
        return _export_model(cfg)


def _export_model(cfg: ExportConfig) -> list[ExportedModel]:
    if cfg.model is None:
        raise TimoeError("--model is required: a run dir, a TiMoE bundle or hf:ORG/NAME")
    if cfg.out is None:
        raise TimoeError("--out is required: the folder to write")
    out = check_output_path(cfg.out, "--out")  # a link to a folder: that folder
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TimoeError(f"--out {out} exists and is not an empty folder: choose a new one")
    if cfg.query_date is not None:
        parse_query_date(cfg.query_date)
    path = resolve_model_path(cfg.model)
    models = _models_to_export(path, cfg.query_date, cfg.policy)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.absolute().parent))
    chmod_default(staging, 0o777)
    try:
        exported = []
        for folder, model, info in models:
            target = staging / folder if folder else staging
            target.mkdir(exist_ok=True)
            sha = export_gpt_hf(model, info, target)
            label = info.slice_label if info.kind == "expert" else f"dense {info.slice_label}"
            exported.append(ExportedModel(label, Path(folder or "."), info, sha))
        if len(models) > 1 or models[0][0]:
            policy: str = cfg.policy or "inclusive"
            from timoe_core.model.bundle import BUNDLE_FILENAME, BundleSpec

            strategy = "avg"  # a folder of run dirs: no bundle to say otherwise
            if (path / BUNDLE_FILENAME).is_file():  # validated as every reader of it does
                spec = read_metadata(path / BUNDLE_FILENAME, BundleSpec, "rebuild the bundle")
                strategy, policy = spec.strategy, cfg.policy or spec.policy
            atomic_write_text(staging / README_FILENAME,
                              _readme(str(cfg.model), cfg.query_date, policy, exported, strategy))
        save_config(cfg, staging, "timoe-export.yaml")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return exported


__all__ = ["EOT_TOKEN", "ExportedModel", "export_gpt_hf", "export_model",
           "write_gpt2_tokenizer_files"]
