"""Model weights on disk: safetensors only (never pickle), byte-reproducible, checked
for shape, dtype and finiteness when loaded; loading an expert from its run dir."""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from timoe_core import __version__
from timoe_core.errors import TimoeError
from timoe_core.io import (
    atomic_path,
    atomic_write_json,
    sha256_file,
    write_failure_as_os_error,
)
from timoe_core.model.gpt import GPT
from timoe_core.model.run_info import MODEL_FILENAME, RUN_INFO_FILENAME, RunInfo, read_run_info
from timoe_core.model.weight_delta import apply_row_delta, row_delta

StorageDtype = Literal["float32", "bfloat16"]
_STORAGE = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def stored_state(state: dict[str, torch.Tensor], dtype: StorageDtype
                 ) -> dict[str, torch.Tensor]:
    """A state dict as it is written: detached, contiguous, on the CPU, its floating-point
    tensors as `dtype` (bfloat16: round-to-nearest-even, deterministic)."""
    store = _STORAGE[dtype]
    return {k: (v.detach().to(store) if v.is_floating_point() else v.detach()).contiguous().cpu()
            for k, v in state.items()}


def save_model_weights(run_dir: Path, model: torch.nn.Module,
                       dtype: StorageDtype = "float32", parent: Path | None = None) -> Path:
    """Weights as safetensors, atomically. Tied weights are stored once (lm_head is wte)."""
    return save_weights_state(run_dir, model.state_dict(), dtype, parent)


def untied_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A GPT's state dict as its weights file holds it: lm_head is wte, stored once."""
    return {k: v for k, v in state.items() if k != "lm_head.weight"}


def save_weights_state(run_dir: Path, state: dict[str, torch.Tensor],
                       dtype: StorageDtype = "float32", parent: Path | None = None) -> Path:
    """A model's state dict as RUN_DIR/model.safetensors, atomically, its floating-point
    tensors stored as `dtype` (bfloat16: round-to-nearest-even, deterministic; loading
    copies them into the float32 model, so compute stays float32); as a delta from the
    weights file `parent` where that is smaller (`write_weights_file`)."""
    path = Path(run_dir) / MODEL_FILENAME
    write_weights_file(path, untied_state(state), dtype, parent)
    return path


# The metadata entry of a weights file stored as a delta from its parent (weight_delta.py).
DELTA_METADATA = "delta"


def parent_link(path: Path) -> Path:
    """The file beside the weights file `path` that says where its parent is (kept out of
    the weights file, whose bytes must not depend on where the parent lives)."""
    return path.with_name(path.name.removesuffix(".safetensors") + ".parent.json")


def _write_parent_link(path: Path, parent: Path, parent_sha: str) -> None:
    """`parent_link(path)`: the parent's path relative to `path`'s folder, and its sha256."""
    atomic_write_json(parent_link(path), {"path": os.path.relpath(parent, path.parent),
                                          "sha256": parent_sha})


def write_weights_file(path: Path, state: dict[str, torch.Tensor], dtype: StorageDtype,
                       parent: Path | None = None) -> None:
    """`state` as the safetensors file `path`, atomically, its floating-point tensors
    stored as `dtype`. With `parent` (a weights file the state went on from), the tensors
    and rows bitwise equal to the parent's are not stored again (model/weight_delta.py):
    the file's metadata records the parent's sha256, and `parent_link(path)` its path."""
    stored = stored_state(state, dtype)
    metadata = {"format": "pt", "timoe_version": __version__}
    delta = None
    if parent is not None:
        parent_sha = sha256_file(parent)
        parent_state = read_weights_file(parent, "retrain the run")
        # kept as a read of this file keeps it: reading it back (a staged run goes on from
        # what is stored) does not read the parent again
        _remember((str(parent.resolve()), parent_sha), parent_state)
        delta = row_delta(stored, parent_state)
        if delta is not None:
            stored, metadata[DELTA_METADATA] = delta
            metadata["parent_sha256"] = parent_sha
            _write_parent_link(path, parent, parent_sha)
    with atomic_path(path) as tmp:
        try:
            save_safetensors(stored, tmp, metadata=metadata)
        except (SafetensorError, OSError) as exc:
            # its I/O errors (disk full...) as the OSError they are
            os_error = write_failure_as_os_error(exc, path)
            if os_error is None:
                raise
            raise os_error from None
    if delta is None:
        parent_link(path).unlink(missing_ok=True)


def copy_weights_file(src: Path, dst: Path) -> None:
    """Copy a weights file, atomically; a delta's link to its parent is rewritten to lead
    from `dst` to the same parent."""
    metadata = _metadata(src)
    if DELTA_METADATA in metadata:  # its parent checked as a read checks it
        parent, key = _parent(src, metadata.get("parent_sha256", ""), "retrain the run")
        _write_parent_link(dst, parent, key[1])
    else:
        parent_link(dst).unlink(missing_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def weights_file_holds(path: Path, state: dict[str, torch.Tensor], dtype: StorageDtype
                       ) -> bool:
    """Whether the weights file `path` holds exactly `state` stored as `dtype` (a staged
    run saved it there already: reading it back costs less than writing and syncing)."""
    if not path.is_file():
        return False
    try:
        saved = read_weights_file(path, "")
    except TimoeError:
        return False
    stored = stored_state(state, dtype)
    return saved.keys() == stored.keys() and all(torch.equal(saved[k], stored[k])
                                                 for k in stored)


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


# The last parents read, by (path, sha256): loading a run of snapshots in order reads
# each one's parent once. Their tensors are shared with what `read_weights_file` returns.
_PARENTS: OrderedDict[tuple[str, str], dict[str, torch.Tensor]] = OrderedDict()
_PARENTS_KEPT = 2


def read_weights_file(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """The state stored in the safetensors file `path`, a delta resolved through its
    parents (each checked against the sha256 it was stored against), walked up the chain
    to a whole file (or a parent read just before), then applied back down. TimoeError
    ending in `fix` when a file is corrupt or a parent is missing or changed. Treat its
    tensors as read-only (load them into a module)."""
    chain: list[tuple[Path, dict[str, torch.Tensor], str, tuple[str, str] | None]] = []
    current, key = path, None
    while True:
        try:
            metadata = _metadata(current)
            tensors = load_file(str(current))
        except (SafetensorError, OSError, ValueError) as exc:
            raise TimoeError(f"{current} is corrupt ({exc}): {fix}") from None
        delta = metadata.get(DELTA_METADATA)
        if delta is None:
            state = tensors
            break
        chain.append((current, tensors, delta, key))
        current, key = _parent(current, metadata.get("parent_sha256", ""), fix)
        if any(key == k for *_, k in chain):
            raise TimoeError(f"{path} is stored as a delta from a chain of parents that "
                             f"loops back to {current}: {fix}")
        cached = _PARENTS.get(key)
        if cached is not None:
            state = cached
            break
    _remember(key, state)  # the parent of the last delta read (None: `path` is whole)
    for current, tensors, delta, key in reversed(chain):
        try:
            state = apply_row_delta(tensors, delta, state)
        except ValueError as exc:
            raise TimoeError(f"{current} is corrupt ({exc}): {fix}") from None
        _remember(key, state)
    return state


def _parent(path: Path, sha: str, fix: str) -> tuple[Path, tuple[str, str]]:
    """The weights file the delta `path` was stored against, checked against its sha256,
    and its cache key."""
    link = parent_link(path)
    try:
        # lexically, as os.path.relpath wrote it (a chain's paths stay short)
        parent = Path(os.path.normpath(path.parent / str(json.loads(link.read_text())["path"])))
    except (OSError, ValueError, KeyError, TypeError):
        raise TimoeError(f"{path} is stored as a delta from its parent, but {link}, which "
                         f"says where that is, is missing or unreadable: {fix}") from None
    if not parent.is_file():
        raise TimoeError(f"{path} is stored as a delta from {parent}, which is missing: "
                         f"restore it, or {fix}")
    if sha256_file(parent) != sha:
        raise TimoeError(f"{parent} changed since {path} was stored as a delta from it "
                         f"(sha256 mismatch): restore it, or {fix}")
    return parent, (str(parent.resolve()), sha)


def _remember(key: tuple[str, str] | None, state: dict[str, torch.Tensor]) -> None:
    """Keep `state` as the parent read under `key` (the last _PARENTS_KEPT)."""
    if key is None:
        return
    _PARENTS.pop(key, None)
    _PARENTS[key] = state
    while len(_PARENTS) > _PARENTS_KEPT:
        _PARENTS.popitem(last=False)


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str]) -> None:
    """safetensors.torch.save_file, byte-reproducibly: safetensors writes its metadata
    mapping in hash order, different on each call, so two identical models got different
    files and sha256s. The header is rewritten with sorted keys (the tensor data and its
    offsets, relative to the end of the header, are unchanged)."""
    blob = save(state, metadata=metadata)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | dict(
        sorted(header.items())
    )
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(memoryview(blob)[8 + n :])


def load_model_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = Path(run_dir) / MODEL_FILENAME
    if not path.is_file():
        raise TimoeError(f"{path} is missing: the run has no saved weights yet")
    return read_weights_file(path, "retrain or restore it")


def load_weights_into(model: GPT, directory: Path) -> GPT:
    """Load `directory`/model.safetensors into `model` in place (re-tying lm_head)."""
    state = load_model_weights(directory)
    if "wte.weight" in state:
        state["lm_head.weight"] = state["wte.weight"]
    check_state_matches(
        model, state, Path(directory) / MODEL_FILENAME, RUN_INFO_FILENAME,
        "retrain or restore the run dir",
    )  # fmt: skip
    check_weights_usable(state, Path(directory) / MODEL_FILENAME, "retrain or restore the run dir")
    model.load_state_dict(state, strict=True)
    return model


_WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_weights_usable(state: dict[str, torch.Tensor], path: Path, fix: str) -> None:
    """TimoeError unless every tensor is floating point (fp32/fp16/bf16) and finite: int
    weights would be silently cast, NaN/inf ones give NaN perplexity with exit 0."""
    for name, t in state.items():
        if t.dtype not in _WEIGHT_DTYPES:
            raise TimoeError(
                f"{path}: tensor {name} has dtype {str(t.dtype).removeprefix('torch.')}, "
                f"not float32, float16 or bfloat16: these are not model weights; {fix}"
            )
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise TimoeError(
                f"{path}: tensor {name} holds {bad} NaN or infinite values: the weights are "
                f"damaged (or the run diverged); {fix}"
            )


def check_state_matches(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    path: Path,
    config_file: str,
    fix: str,
) -> None:
    """TimoeError naming the tensors (up to 3) where the weights file `path` and the
    module its config file describes disagree: missing, unexpected, other shape."""
    expected = module.state_dict()
    diffs = [f"{k} is missing" for k in expected if k not in state]
    diffs += [f"{k} is unexpected" for k in state if k not in expected]
    diffs += [
        f"{k} has shape {tuple(state[k].shape)}, the config gives {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if diffs:
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise TimoeError(
            f"{path} does not match the model config in {config_file} "
            f"({'; '.join(diffs[:3])}{more}): the weights belong to another model; {fix}"
        )


def load_expert(run_dir: Path, device: str | torch.device = "cpu") -> tuple[GPT, RunInfo]:
    """A GPT from a run dir, in eval mode, with its run.json."""
    info = read_run_info(run_dir)
    model = load_weights_into(GPT(info.model_config_, init_weights=False), run_dir)
    return model.to(device).eval(), info


def weights_sha256(run_dir: Path) -> str:
    return sha256_file(Path(run_dir) / MODEL_FILENAME)

