"""Every RNG a run draws from (torch on CPU and CUDA, numpy's global one, Python's
`random`): seeded (`seed_all`, per rank `rank_seed`), and captured and restored as
tensors and plain values a weights_only load reads (`RngState`), so a resumed run and a
decay branch go on with the draws they would have made."""

from __future__ import annotations

import random
from typing import TypedDict

import numpy as np
import torch


class NumpyRngState(TypedDict):
    kind: str
    keys: torch.Tensor
    pos: int
    has_gauss: int
    gauss: float


class PythonRngState(TypedDict):
    version: int
    state: torch.Tensor
    gauss: float | None


class RngState(TypedDict):
    """One process's RNG states as tensors and plain values (weights_only-safe)."""

    torch: torch.Tensor
    numpy: NumpyRngState
    python: PythonRngState
    cuda: torch.Tensor | None



def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global RNG and Python's `random`."""
    seed = int(seed) % (2**63)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """A per-rank seed (dropout masks differ between ranks), fixed by (seed, rank)."""
    return int(np.random.SeedSequence([int(seed), int(rank), 1]).generate_state(1, np.uint64)[0])


def capture_rng(device: torch.device) -> RngState:
    """This process's RNG states as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    out: RngState = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "cuda": None,
    }
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(state: RngState, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    cuda = state.get("cuda")
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
