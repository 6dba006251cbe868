"""Model weights on disk: safetensors only (never pickle), byte-reproducible, checked
for shape, dtype and finiteness when loaded; loading an expert from its run dir."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from timoe_core import __version__
from timoe_core.errors import TimoeError
from timoe_core.io import atomic_path, sha256_file, write_failure_as_os_error
from timoe_core.model.gpt import GPT
from timoe_core.model.run_info import MODEL_FILENAME, RUN_INFO_FILENAME, RunInfo, read_run_info

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
                       dtype: StorageDtype = "float32") -> Path:
    """Weights as safetensors, atomically. Tied weights are stored once (lm_head is wte)."""
    return save_weights_state(run_dir, model.state_dict(), dtype)


def save_weights_state(run_dir: Path, state: dict[str, torch.Tensor],
                       dtype: StorageDtype = "float32") -> Path:
    """A model's state dict as RUN_DIR/model.safetensors, atomically, its floating-point
    tensors stored as `dtype` (bfloat16: round-to-nearest-even, deterministic; loading
    copies them into the float32 model, so compute stays float32)."""
    state = stored_state({k: v for k, v in state.items() if k != "lm_head.weight"}, dtype)
    path = Path(run_dir) / MODEL_FILENAME
    with atomic_path(path) as tmp:
        try:
            save_safetensors(state, tmp, metadata={"format": "pt", "timoe_version": __version__})
        except (SafetensorError, OSError) as exc:
            # its I/O errors (disk full...) as the OSError they are
            os_error = write_failure_as_os_error(exc, path)
            if os_error is None:
                raise
            raise os_error from None
    return path


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
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TimoeError(f"{path} is corrupt ({exc}): retrain or restore it") from None


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

