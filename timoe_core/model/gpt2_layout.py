"""The GPT-2 checkpoint layouts timoe's GPT maps onto, in both directions.

timoe's blocks are GPT-2's (pre-LayerNorm, exact-erf GELU, tied embeddings, biases,
LayerNorm eps 1e-5), so the conversions are renames, plus a transpose for
transformers' GPT2 (its projections are `Conv1D`, stored (in, out); nn.Linear stores
(out, in)). A model without biases gets zero biases in the GPT-2 layout: the same
function. The vocab stays as trained (timoe pads GPT-2's 50,257 tokens to 50,304 for
the matmul; the extra rows are never a token id) so log-probs match bit for bit up to
the order of floating-point sums.

    timoe                       transformers GPT2LMHeadModel        paper's GPTBase
    wte / wpe / ln_f            transformer.wte / wpe / ln_f        same
    blocks.N.ln_1 / ln_2        transformer.h.N.ln_1 / ln_2         same
    blocks.N.attn.qkv           transformer.h.N.attn.c_attn (T)     ... attn.c_attn
    blocks.N.attn.proj          transformer.h.N.attn.c_proj (T)     ... attn.c_proj
    blocks.N.mlp.fc / proj      transformer.h.N.mlp.c_fc / c_proj (T)  ... mlp.c_fc / c_proj
    lm_head (= wte)             lm_head (tied)                      lm_head (tied)
"""

from __future__ import annotations

import re

import torch

from timoe_core.model.gpt import GPT2_VOCAB_SIZE, GPTConfig

EOT_TOKEN = GPT2_VOCAB_SIZE - 1
LAYER_NORM_EPS = 1e-5
# Linear layers whose weight transformers' GPT2 stores transposed (Conv1D).
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_BLOCK_NAMES = {  # timoe name inside a block -> GPT-2 name inside a block
    "ln_1": "ln_1", "ln_2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
    "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj",
}
_TOP_NAMES = {"wte": "transformer.wte", "wpe": "transformer.wpe", "ln_f": "transformer.ln_f"}


def gpt2_name(timoe_name: str) -> str:
    """'blocks.3.attn.qkv.weight' -> 'transformer.h.3.attn.c_attn.weight'."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", timoe_name)
    if m:
        return f"transformer.h.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    module, _, param = timoe_name.rpartition(".")
    return f"{_TOP_NAMES[module]}.{param}"


def to_gpt2_state(model_state: dict[str, torch.Tensor], config: GPTConfig, *,
                  conv1d: bool) -> dict[str, torch.Tensor]:
    """timoe weights -> GPT-2 names (lm_head left out: it is wte). conv1d: transformers'
    orientation; else nn.Linear's (GPTBase). Missing biases become zeros."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model_state.items():
        if name == "lm_head.weight":
            continue
        target = gpt2_name(name)
        if conv1d and name.endswith(".weight") and target.rsplit(".", 1)[0].endswith(_CONV1D):
            tensor = tensor.t()
        out[target] = tensor.detach().contiguous().cpu()
    if not config.bias:
        for name, tensor in list(out.items()):
            if name.endswith(".weight") and ("ln_" in name or name.rsplit(".", 1)[0].endswith(
                    _CONV1D)):
                rows = tensor.shape[1] if conv1d and "ln_" not in name else tensor.shape[0]
                out[name[: -len("weight")] + "bias"] = torch.zeros(rows, dtype=tensor.dtype)
    return out


def from_gpt2_state(state: dict[str, torch.Tensor], config: GPTConfig, *, conv1d: bool
                    ) -> dict[str, torch.Tensor]:
    """GPT-2 names -> timoe weights (with lm_head tied to wte). Keys timoe has no place
    for are left out; the caller checks the result against the model (names, shapes)."""
    reverse = {gpt2_name(k): k for k in _timoe_names(config)}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        key = name.removeprefix("_orig_mod.")  # torch.compile'd checkpoints
        if key not in reverse:
            continue
        if conv1d and key.endswith(".weight") and key.rsplit(".", 1)[0].endswith(_CONV1D):
            tensor = tensor.t()
        out[reverse[key]] = tensor.contiguous()
    if "wte.weight" in out:
        out["lm_head.weight"] = out["wte.weight"]
    return out


def _timoe_names(config: GPTConfig) -> list[str]:
    names = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
    for i in range(config.n_layer):
        for part in _BLOCK_NAMES:
            names += [f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"]
    return names


def hf_gpt2_config(config: GPTConfig, **extra: object) -> dict[str, object]:
    """config.json of a transformers GPT2LMHeadModel computing what `config` computes."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd, as timoe's MLP
        "activation_function": "gelu",  # exact erf GELU (GPT-2's own default is the tanh one)
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": EOT_TOKEN,
        "eos_token_id": EOT_TOKEN,
        "use_cache": True,
        "torch_dtype": "float32",
        **extra,
    }
