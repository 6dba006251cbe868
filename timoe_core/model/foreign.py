"""Reading GPT-2-layout checkpoints made elsewhere into timoe's GPT.

Formats:
- `gptbase`: the TiMoE paper code's `GPTBase` experts as `PyTorchModelHubMixin` saves
  them: `config.json` with `n_layer, n_head, n_embd, vocab_size, sequence_length, bias,
  dropout, mlp_dim_exp_factor` (and others timoe does not need), and `model.safetensors`
  (or `pytorch_model.bin`, read with `torch.load(weights_only=True)`) with the weights
  `transformer.wte/wpe/ln_f`, `transformer.h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2,
  mlp.c_fc, mlp.c_proj}` as nn.Linear/LayerNorm and `lm_head` (tied to wte; stored once
  or twice).
- `hf`: a transformers `GPT2LMHeadModel` folder (`config.json` + `model.safetensors`).

What timoe's GPT cannot compute is refused with the field at fault: another MLP width
(`mlp_dim_exp_factor` != 1), a vocab that is not GPT-2's, an activation other than
GELU, an untied lm_head, weights whose names or shapes do not fit the config.

Used by `timoe import` (interop.importing) and by `train-expert --init-from` on such a
folder (train.init_from), so it lives in the model layer below both.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from timoe_core.errors import TimoeError, describe_validation_error
from timoe_core.io import read_small_file, safe_loader_refusal
from timoe_core.model.gpt import GPT, GPT2_VOCAB_SIZE, GPTConfig
from timoe_core.model.gpt2_layout import LAYER_NORM_EPS, from_gpt2_state, gpt2_name

ForeignFormat = Literal["gptbase", "hf"]

GPTBASE_REQUIRED = ("n_layer", "n_head", "n_embd", "vocab_size", "sequence_length", "bias",
                    "dropout", "mlp_dim_exp_factor")
# GPT-2's 50,257 tokens, padded for the matmul by at most this much (50,304 is usual).
MAX_VOCAB_PADDING = 1024


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise TimoeError(f"{folder} has no config.json: give the folder the model was saved to")
    try:
        data = json.loads(read_small_file(path).decode("utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: JSON, UTF-8, a 5000-digit number
        raise TimoeError(f"{path} is not readable JSON ({describe_validation_error(exc)})"
                         ) from None
    if not isinstance(data, dict):
        raise TimoeError(f"{path} must hold a JSON object of settings")
    return data


def _read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        try:
            return load_file(str(st)), st
        except (SafetensorError, OSError, ValueError) as exc:
            raise TimoeError(f"{st} is not a readable safetensors file ({exc})") from None
    if pt.is_file():
        try:  # weights only: an untrusted pickle must never execute code
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's own advice goes to stderr otherwise
                state = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors come in many types
            why = (safe_loader_refusal(exc) if isinstance(exc, pickle.UnpicklingError)
                   else (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160])
            raise TimoeError(
                f"{pt} is a pickle timoe will not unpickle ({why}): timoe reads weights only; "
                "convert it to model.safetensors on a machine where you trust the file, e.g. "
                f"`python -c \"import torch; from safetensors.torch import save_file; "
                f"sd = torch.load('{pt}', map_location='cpu', weights_only=False); "
                "sd = sd.get('model', sd); save_file({k: v.contiguous() for k, v in "
                f"sd.items()}}, '{folder}/model.safetensors')\"`, then import the folder again"
            ) from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in state.values()):
            raise TimoeError(f"{pt} does not hold a dict of tensors")
        return state, pt
    raise TimoeError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def _field(config: dict, key: str, path: Path, kind: type | tuple[type, ...]) -> Any:
    if key not in config:
        raise TimoeError(f"{path}: the field {key!r} is missing")
    value = config[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise TimoeError(f"{path}: the field {key!r} must be a number, got {value!r}")
    if not isinstance(value, kind):
        raise TimoeError(f"{path}: the field {key!r} has the wrong type ({value!r})")
    return value


def _check_vocab(vocab: int, path: Path, key: str) -> None:
    if not GPT2_VOCAB_SIZE <= vocab <= GPT2_VOCAB_SIZE + MAX_VOCAB_PADDING:
        raise TimoeError(
            f"{path}: {key} {vocab} is not GPT-2's vocab (50257 tokens, possibly padded, e.g. "
            "to 50304): timoe reads GPT-2 BPE models only"
        )


def gptbase_config(config: dict, path: Path) -> GPTConfig:
    """The GPTConfig of a GPTBase config.json; TimoeError naming the field that differs."""
    for key in GPTBASE_REQUIRED:
        _field(config, key, path, object)
    factor = _field(config, "mlp_dim_exp_factor", path, (int, float))
    if not math.isclose(float(factor), 1.0):
        raise TimoeError(
            f"{path}: mlp_dim_exp_factor {factor} gives an MLP of {factor} x 4 x n_embd; "
            "timoe's experts have 4 x n_embd (factor 1): this model cannot be imported"
        )
    vocab = _field(config, "vocab_size", path, int)
    _check_vocab(vocab, path, "vocab_size")
    for key in ("n_layer", "n_head", "n_embd", "sequence_length"):
        if _field(config, key, path, int) < 1:
            raise TimoeError(f"{path}: {key} must be a positive integer")
    if config["n_embd"] % config["n_head"]:
        raise TimoeError(f"{path}: n_embd {config['n_embd']} is not divisible by n_head "
                         f"{config['n_head']}")
    return GPTConfig(
        vocab_size=vocab, block_size=config["sequence_length"], n_layer=config["n_layer"],
        n_head=config["n_head"], n_embd=config["n_embd"],
        dropout=float(_field(config, "dropout", path, (int, float))),
        bias=bool(_field(config, "bias", path, bool)),
    )


def hf_config(config: dict, path: Path) -> GPTConfig:
    """The GPTConfig of a transformers GPT2 config.json; TimoeError for what differs."""
    if config.get("model_type") != "gpt2":
        raise TimoeError(f"{path}: model_type {config.get('model_type')!r} is not 'gpt2': "
                         "only GPT2LMHeadModel folders can be imported")
    checks = {
        "activation_function": ("gelu", "timoe's MLP uses the exact (erf) GELU"),
        "scale_attn_by_inverse_layer_idx": (False, "timoe's attention is not scaled by layer"),
        "reorder_and_upcast_attn": (False, None),
        "tie_word_embeddings": (True, "timoe's lm_head is tied to wte"),
    }
    for key, (want, why) in checks.items():
        if key in config and config[key] != want:
            raise TimoeError(f"{path}: {key} is {config[key]!r}, timoe needs {want!r}"
                             + (f" ({why})" if why else ""))
    if config.get("n_inner") not in (None, 4 * config.get("n_embd", 0)):
        raise TimoeError(f"{path}: n_inner {config['n_inner']} is not 4 x n_embd: timoe's "
                         "experts have an MLP of 4 x n_embd")
    eps = config.get("layer_norm_epsilon", LAYER_NORM_EPS)
    if not math.isclose(float(eps), LAYER_NORM_EPS):
        raise TimoeError(f"{path}: layer_norm_epsilon {eps} is not 1e-5 (timoe's LayerNorm)")
    vocab = _field(config, "vocab_size", path, int)
    _check_vocab(vocab, path, "vocab_size")
    n_embd, n_head = _field(config, "n_embd", path, int), _field(config, "n_head", path, int)
    if n_embd % n_head:
        raise TimoeError(f"{path}: n_embd {n_embd} is not divisible by n_head {n_head}")
    drop = float(config.get("resid_pdrop", 0.0))
    return GPTConfig(vocab_size=vocab, block_size=_field(config, "n_positions", path, int),
                     n_layer=_field(config, "n_layer", path, int), n_head=n_head, n_embd=n_embd,
                     dropout=drop, bias=True)


def _check_tied(state: dict[str, torch.Tensor], path: Path, wte_key: str) -> None:
    head = state.get("lm_head.weight")
    if head is not None and wte_key in state and not torch.equal(head, state[wte_key]):
        raise TimoeError(f"{path}: lm_head.weight differs from {wte_key}: timoe's experts tie "
                         "them; an untied model cannot be imported")


def read_foreign_model(fmt: ForeignFormat | str, folder: Path) -> GPT:
    """A timoe GPT holding the model in `folder` (format gptbase or hf), in eval mode."""
    raw = _read_config(folder)
    path = folder / "config.json"
    try:
        config = (gptbase_config if fmt == "gptbase" else hf_config)(raw, path)
    except (ValidationError, ValueError, TypeError, OverflowError) as exc:
        # sizes beyond any real model (GPTConfig's bounds), numbers float() cannot hold
        raise TimoeError(f"{path} cannot be imported ({describe_validation_error(exc)}): "
                         "check its values") from None
    state, weights_path = _read_weights(folder)
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    if fmt == "hf" and not any(k.startswith("transformer.") for k in state):
        state = {("lm_head.weight" if k == "lm_head.weight" else f"transformer.{k}"): v
                 for k, v in state.items()}  # GPT2Model-style names (the original gpt2 files)
    _check_tied(state, weights_path, "transformer.wte.weight")
    model = GPT(config, init_weights=False)
    _check_layout(model, state, fmt, weights_path)
    mapped = from_gpt2_state(state, config, conv1d=(fmt == "hf"))
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def _check_layout(model: GPT, state: dict[str, torch.Tensor], fmt: str, path: Path) -> None:
    """TimoeError naming (in the file's own names, up to 3) the tensors that are missing,
    unexpected or of another shape than config.json implies."""
    conv1d = fmt == "hf"
    expected: dict[str, tuple[int, ...]] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        target = gpt2_name(name)
        shape = tuple(tensor.shape)
        if conv1d and name.endswith(".weight") and len(shape) == 2 and not target.endswith(
                ("wte.weight", "wpe.weight")):
            shape = shape[::-1]
        expected[target] = shape
    ignored = ("lm_head.weight", ".attn.bias", ".attn.masked_bias")  # tied copy; mask buffers
    diffs = [f"{k} is missing" for k in expected if k not in state]
    diffs += [f"{k} is unexpected" for k in state if k not in expected
              and not k.endswith(ignored)]
    diffs += [f"{k} has shape {tuple(state[k].shape)}, config.json gives {v}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != v]
    if diffs:
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise TimoeError(f"{path} does not match its config.json as a {fmt} GPT-2 layout "
                         f"({'; '.join(diffs[:3])}{more}): check --format and the folder")


def foreign_format(folder: Path) -> ForeignFormat:
    """Which format a folder holding config.json is: hf (model_type gpt2) or gptbase."""
    return "hf" if _read_config(folder).get("model_type") == "gpt2" else "gptbase"


def foreign_weights_file(folder: Path) -> Path:
    """The weights file `read_foreign_model` reads in `folder` (for its checksum)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise TimoeError(f"{folder} has neither model.safetensors nor pytorch_model.bin")
