"""The KV cache: the one type in which a GPT keeps the keys and values of decoded positions.

Preallocated for `capacity` positions of every layer; a step writes its new positions in
place and attends over the filled prefix, so no step copies the cache (re-concatenating
every layer's keys and values each token was a fifth of a decoding step on CPU). A model
makes one shaped for itself (`GPT.new_kv_cache`); decoding (model/decoding.py) owns them.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer: (layers, batch, heads, capacity, head_dim) each."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        capacity: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_layer, batch_size, n_head, capacity, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.layers = [(self.keys[i], self.values[i]) for i in range(n_layer)]  # views
        self.capacity = capacity
        self.length = 0  # positions filled

    def layer(self, index: int) -> KVCacheLayer:
        return KVCacheLayer(self, index)

    def reset(self) -> None:
        """Empty it (a new window starts); the memory is kept."""
        self.length = 0


class KVCacheLayer:
    """Layer `index` of a KVCache, as the attention sees it during one step."""

    __slots__ = ("cache", "index")

    def __init__(self, cache: KVCache, index: int) -> None:
        self.cache, self.index = cache, index

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's keys/values after the filled prefix; views of all so far."""
        start, end = self.cache.length, self.cache.length + k.size(2)
        keys, values = self.cache.layers[self.index]
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys[:, :, :end], values[:, :, :end]
