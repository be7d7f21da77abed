"""Attention that reads grouped key/value heads in place, for a model decoding on a CPU.

Qwen2-VL's decoder has fewer key/value heads than query heads. Given an attention mask
(the HF engine's left-padded batch always has one), transformers' SDPA attention first
copies every layer's keys and values out to each query head, since the CUDA kernels it
would otherwise pick cannot take a mask together with grouped heads. On a CPU that copy
was most of a decode step with a long batch (2026-12-06, 2 vCPUs: 48 rows of 1,200 tokens,
39 ms for one layer's attention with the copy, 2.7 ms reading the groups in place, the same
numbers to the bit). ``GROUPED`` is the same SDPA call with ``enable_gqa`` and no copy; it is
registered with transformers under that name, and ``attention_for`` picks it on a CPU only.
A decode step (one query per row) goes further: the queries that share a key/value head
become the rows of one attention over that head, a plain matrix product instead of the
kernel's grouped path (2026-12-07, 2 vCPUs, the tiny model's whole decode step: 48 rows of
1,200 tokens 33-36 -> 27 ms, 32 rows of 600 16-17 -> 15 ms, a few short rows unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

GROUPED = "vlrl_sdpa_grouped"


def sdpa_grouped(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (batch, heads, length, dim) in, (batch, length, heads, dim) out."""
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    rows, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    if length == 1 and groups > 1:  # a decode step: each key/value head's queries as the rows of one attention
        out = F.scaled_dot_product_attention(
            query.view(rows, key.shape[1], groups, dim), key, value, attn_mask=attention_mask, dropout_p=dropout,
            scale=scaling)
        return out.view(rows, 1, heads, dim), None
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=bool(causal and attention_mask is None and length > 1),
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED, sdpa_grouped)
AttentionMaskInterface.register(GROUPED, sdpa_mask)


def attention_for(device: torch.device | str) -> str:
    """The ``attn_implementation`` to load a model with for ``device``: ``GROUPED`` on a CPU, else SDPA."""
    return GROUPED if torch.device(device).type == "cpu" else "sdpa"
