"""The HF engine's running batch's KV cache: each layer's keys and values in a buffer with room to grow in place.

transformers' ``DynamicCache`` appends a decode step's keys and values with ``torch.cat``:
every step copies the whole batch's cache, every row padded to the longest. On the 2-vCPU
machine that copy was the largest part of a decode step once the batch held long rows
(2026-12-06: 48 rows of 1,200 tokens, 50 ms a step with it, 28 ms writing in place).
Here a step writes its new column into spare room, and the cache only moves when that room
runs out (it then doubles) or when rows join or leave the batch (the engine rebuilds it, one
copy of every row it keeps: ``left_padded``, ``select_rows``). A multi-row prefill builds its
rows' reused prefixes into one such cache too, and writes its new tokens into the room.

The tensors a layer hands out are views of its buffer up to its length. Positions a view
covers are never written again (the cache only appends), so a view taken as a prefix
(``HFEngine._running_prefixes``) stays valid while the batch goes on decoding.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

ROOM = 64  # spare positions a fresh buffer holds beyond its length (at least; a quarter of the length when longer)

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (rows, heads, length, dim)


def capacity(length: int) -> int:
    """Positions of a buffer made for ``length`` of them."""
    return length + max(ROOM, length // 4)


class GrowingLayer(DynamicLayer):
    """A decoder layer's keys and values: buffers (rows, heads, capacity, dim) filled up to ``length``, appended in
    place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._keys, self._values = keys, values
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
        n, m = self.keys.shape[-2], key_states.shape[-2]
        if n + m > self._keys.shape[-2]:  # full: move to a buffer twice the size
            self._keys, self._values = (_buffer(t, t.shape[0], 2 * (n + m)) for t in (self.keys, self.values))
            self._keys[:, :, :n], self._values[:, :, :n] = self.keys, self.values
        self._keys[:, :, n: n + m] = key_states
        self._values[:, :, n: n + m] = value_states
        self.keys, self.values = self._keys[:, :, : n + m], self._values[:, :, : n + m]
        return self.keys, self.values


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` over ``GrowingLayer``\\ s."""

    def __init__(self, layers: list[GrowingLayer]):
        Cache.__init__(self, layers=layers)


def left_padded(parts: list[Layers], room: int = 0) -> GrowingCache:
    """One cache holding every part's rows in order, each left-padded with zeros to the longest part's length, with
    room for ``room`` more positions at least (a prefill's new tokens) before it has to move."""
    width = max(part[0][0].shape[2] for part in parts)
    rows = sum(part[0][0].shape[0] for part in parts)
    layers = []
    for layer in range(len(parts[0])):
        keys, values = (_buffer(t, rows, capacity(width + room)) for t in parts[0][layer])
        row = 0
        for part in parts:
            for buffer, t in zip((keys, values), part[layer]):
                n, end = t.shape[2], row + t.shape[0]
                buffer[row:end, :, : width - n] = 0  # masked, but read: no garbage that could be NaN
                buffer[row:end, :, width - n: width] = t
            row = end
        layers.append(GrowingLayer(keys, values, width))
    return GrowingCache(layers)


def select_rows(cache: GrowingCache, rows: torch.Tensor, lead: int) -> GrowingCache:
    """The cache of ``rows`` alone, without its first ``lead`` positions (padding every one of them has)."""
    layers = []
    for layer in cache.layers:
        width = layer.keys.shape[2] - lead
        keys, values = (_buffer(t, len(rows), capacity(width)) for t in (layer.keys, layer.values))
        torch.index_select(layer.keys[:, :, lead:], 0, rows, out=keys[:, :, :width])
        torch.index_select(layer.values[:, :, lead:], 0, rows, out=values[:, :, :width])
        layers.append(GrowingLayer(keys, values, width))
    return GrowingCache(layers)


def _buffer(like: torch.Tensor, rows: int, positions: int) -> torch.Tensor:
    return like.new_empty(rows, like.shape[1], positions, like.shape[3])
