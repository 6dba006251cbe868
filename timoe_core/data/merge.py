"""`prepare-data --merge`: the outputs of `--num-shards/--shard-index` runs (or any data
dirs with the same tokenizer, slicing, seq_len, val_fraction and --max-docs) merged into
one, in (date, text hash) order, so shards merged are the unsharded run byte for byte."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from timoe_core.config import PrepareDataConfig
from timoe_core.data.manifest import (
    INDEX_DTYPE,
    SPLITS,
    Manifest,
    ShardSpec,
    index_file_relpath,
    load_manifest,
    token_file_relpath,
)
from timoe_core.data.ordering import SPILL_DTYPE, OrderedSource, write_year
from timoe_core.data.output_dir import (
    Staging,
    check_out_dir,
    finish_data_dir,
    raise_naming_the_path,
)
from timoe_core.data.progress import SKIP_REASONS, PrepareProgress, ProgressCallback
from timoe_core.data.token_files import TOKEN_DTYPE, Outputs
from timoe_core.errors import TimoeError
from timoe_core.io import sha256_file

# What decides which documents a shard holds and how they were read, besides the shard
# index: recorded in the manifest (Manifest.reading) so a merge can cross-check them.
_READING_FIELDS = ("text_field", "date_field", "max_docs", "hf_split", "skip_bad_rows", "seed",
                   "builtin_docs_per_year")


def reading_options(cfg: PrepareDataConfig) -> dict[str, str | int | bool | None]:
    return {name: getattr(cfg, name) for name in _READING_FIELDS}


def _reading_option(name: str) -> Callable[[Manifest], object]:
    """A manifest's value of one reading option (None when it records none)."""
    return lambda m: (m.reading or {}).get(name)


def check_compatible(dirs: list[Path], manifests: list[Manifest]) -> None:
    """Every field that makes shards one corpus must agree: tokenizer, slicing, seq_len,
    val_fraction, --until, the source and how it was read (manifest.reading)."""
    first_dir, first = dirs[0], manifests[0]
    checks: dict[str, Callable[[Manifest], object]] = {
        "tokenizer": lambda m: (m.tokenizer, m.vocab_size, m.eot_token, m.dtype),
        "slicing": lambda m: (m.slicing.start_year, m.slicing.end_year, m.slicing.slice_years),
        "seq_len": lambda m: m.seq_len,
        "val_fraction": lambda m: m.val_fraction,
        "--until": lambda m: m.until,
        **{f"--{name.replace('_', '-')}": _reading_option(name) for name in _READING_FIELDS},
        "source": lambda m: m.source,  # after the options its description may show
    }
    for d, m in zip(dirs[1:], manifests[1:]):
        for what, get in checks.items():
            if get(m) != get(first):
                raise TimoeError(
                    f"cannot merge {d} into {first_dir}: their {what} differ "
                    f"({get(m)} vs {get(first)}); prepare them with the same options"
                )
    # Shards k1 of n1 and k2 of n2 of one source share documents (record i with
    # i % n1 == k1 and i % n2 == k2) exactly when k1 == k2 modulo gcd(n1, n2).
    seen: list[tuple[str, ShardSpec, Path]] = []
    for d, m in zip(dirs, manifests):
        for shard in m.shards:
            for source, other, other_dir in seen:
                g = math.gcd(shard.num_shards, other.num_shards)
                if source == m.source and shard.shard_index % g == other.shard_index % g:
                    raise TimoeError(
                        f"{other_dir} (shard {other.shard_index} of {other.num_shards}) and {d} "
                        f"(shard {shard.shard_index} of {shard.num_shards}) hold documents of "
                        f"{m.source} in common: merging them would duplicate documents"
                    )
            seen.append((m.source, shard, d))


def merge_data_dirs(
    cfg: PrepareDataConfig, progress_callback: ProgressCallback | None = None
) -> Manifest:
    """Merge the data dirs `cfg.merge` into `cfg.out`, year by year.

    Every (split, year) file of the result holds the inputs' documents in (date, text
    hash) order, as one prepare-data run over all of them writes it (--max-docs applied
    again to the union), so shards merged are the unsharded run byte for byte. Inputs
    are checked against their manifests' sha256 before they are read, and the result's
    checksums are computed from what is written.
    """
    dirs = [Path(d).expanduser() for d in cfg.merge or []]
    if not dirs:
        raise TimoeError("--merge needs at least one data dir to merge")
    resolved = [d.resolve() for d in dirs]
    for i, d in enumerate(resolved):
        if d in resolved[:i]:
            raise TimoeError(f"{dirs[i]} is given twice to --merge")
    out = check_out_dir(cfg.out, cfg.overwrite)
    target = out.resolve()
    for d, real in zip(dirs, resolved):
        if target == real or real in target.parents or target in real.parents:
            raise TimoeError(
                f"--out {out} would overwrite the --merge input {d}: an output is never one "
                "of its inputs (nor inside one); write the merge to a new folder"
            )
    manifests = [load_manifest(d, verify="size") for d in dirs]
    check_compatible(dirs, manifests)
    first = manifests[0]
    slicing = first.time_slicing()
    sources = list(dict.fromkeys(m.source for m in manifests))
    manifest = Manifest(
        tokenizer=first.tokenizer,
        vocab_size=first.vocab_size,
        eot_token=first.eot_token,
        slicing=first.slicing,
        seq_len=first.seq_len,
        val_fraction=first.val_fraction,
        source=" + ".join(sources),
        shards=[s for m in manifests for s in m.shards],
        until=first.until,
        reading=first.reading,
        max_docs=first.max_docs,
    )
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    for m in manifests:
        for reason, n in m.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    years = sorted({int(y) for m in manifests for y in m.years} | set(slicing.years))

    staging = Staging(out, cfg.overwrite)
    outputs = Outputs(staging.path, years)
    total_bytes = sum(e.bytes for m in manifests for e in m.files.values())
    done_bytes = 0
    t0 = time.perf_counter()
    try:
        for year in years:
            inputs: list[OrderedSource] = []
            for d, m in zip(dirs, manifests):
                for split in SPLITS:
                    source = merge_input(d, m, split, year)
                    if source is not None:
                        inputs.append(source)
                        done_bytes += source.path.stat().st_size
            write_year(outputs, year, inputs, first.max_docs, skipped)
            if progress_callback is not None:
                progress_callback(
                    PrepareProgress(
                        documents=outputs.documents,
                        tokens=outputs.tokens,
                        elapsed_s=time.perf_counter() - t0,
                        skipped=dict(skipped),
                        bytes_read=done_bytes,
                        total_bytes=total_bytes,
                    )
                )
        manifest.years = {str(y): s for y, s in outputs.stats.items()}
        manifest.skipped = skipped
        return finish_data_dir(staging, outputs, cfg, manifest)
    except BaseException as exc:
        outputs.abort()
        staging.discard()
        raise_naming_the_path(exc, out)
        raise


def merge_input(d: Path, m: Manifest, split: str, year: int) -> OrderedSource | None:
    """One input token file and its index, both checked against the manifest's sha256."""
    rel, index_rel = token_file_relpath(split, year), index_file_relpath(split, year)
    entry, index_entry = m.files.get(rel), m.files.get(index_rel)
    if entry is None:
        return None
    if index_entry is None:
        raise TimoeError(
            f"{d} has no {index_rel} (prepared by an older timoe, in source order): "
            "prepare it again to merge it"
        )
    for r, e in ((rel, entry), (index_rel, index_entry)):
        if sha256_file(d / r) != e.sha256:
            raise TimoeError(f"token file {d / r} fails its sha256 check: prepare that "
                             "data dir again")
    index = np.fromfile(d / index_rel, dtype=INDEX_DTYPE)
    if int(index["tokens"].sum()) * TOKEN_DTYPE.itemsize != entry.bytes:
        raise TimoeError(f"{d / index_rel} does not describe {d / rel}: prepare that data "
                         "dir again")
    records = np.empty(len(index), dtype=SPILL_DTYPE)
    for name in ("time_us", "hash", "tokens"):
        records[name] = index[name]
    records["val"] = split == "val"
    return OrderedSource(d / rel, records)
