"""The HF engine's running batch's KV cache: each layer's keys and values in a buffer with room to grow in place.

transformers' ``DynamicCache`` appends a decode step's keys and values with ``torch.cat``:
every step copies the whole batch's cache, every row padded to the longest. On the 2-vCPU
machine that copy was the largest part of a decode step once the batch held long rows
(2026-12-06: 48 rows of 1,200 tokens, 50 ms a step with it, 28 ms writing in place).
Here a step writes its new column into spare room, and the cache only moves when that room
runs out (it then doubles) or when rows join or leave the batch (the engine rebuilds it).

The tensors a layer hands out are views of its buffer up to its length. Positions a view
covers are never written again (the cache only appends), so a view taken as a prefix
(``HFEngine._running_prefixes``) stays valid while the batch goes on decoding.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

ROOM = 64  # spare positions a fresh layer holds beyond its length (at least; a quarter of the length when longer)


class GrowingLayer(DynamicLayer):
    """A decoder layer's (rows, heads, length, dim) keys and values, appended in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._place(keys, values, keys.shape[-2])

    def _place(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Copy ``keys`` and ``values`` into fresh buffers with room beyond ``length``."""
        rows, heads, n, _ = keys.shape
        capacity = length + max(ROOM, length // 4)
        self._keys = keys.new_empty(rows, heads, capacity, keys.shape[-1])
        self._values = values.new_empty(rows, values.shape[1], capacity, values.shape[-1])
        self._keys[:, :, :n] = keys
        self._values[:, :, :n] = values
        self.keys, self.values = self._keys[:, :, :n], self._values[:, :, :n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
        n, m = self.keys.shape[-2], key_states.shape[-2]
        if n + m > self._keys.shape[-2]:
            self._place(self.keys, self.values, 2 * (n + m))
        self._keys[:, :, n: n + m] = key_states
        self._values[:, :, n: n + m] = value_states
        self.keys, self.values = self._keys[:, :, : n + m], self._values[:, :, : n + m]
        return self.keys, self.values


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` over ``GrowingLayer``\\ s, filled with each layer's (keys, values)."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]]):
        Cache.__init__(self, layers=[GrowingLayer(k, v) for k, v in layers])
