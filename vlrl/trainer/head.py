"""Token logprobs and entropy through the output projection, a chunk of positions at a time.

At the shapes users train (8-16k tokens, a 151,936-row vocabulary) the full logits of one
sequence, and their float32 log-softmax, are gigabytes each; the gradient would hold
several more. Here the projection runs over ``chunk`` positions at a time and the
backward recomputes each chunk's logits instead of keeping them, so the memory beyond
the hidden states is one chunk's (chunk x vocabulary) whatever the sequence length. The
values are the direct computation's: logits in the head's dtype, softmax in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Positions per chunk: enough for 2**26 logits (256 MB in float32) at the head's vocabulary.
CHUNK_LOGITS = 2**26


def chunk_rows(vocab: int, budget: int = CHUNK_LOGITS) -> int:
    """How many positions one chunk of ``budget`` logits holds at a ``vocab``-row head (at least 1)."""
    return max(1, budget // vocab)


class _HeadLogprobs(torch.autograd.Function):
    """(N, H) hidden states --> (N,) logprob of each target and its (N,) entropy (no gradient)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                targets: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logprobs)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = F.linear(hidden[rows], weight, bias).float()
            logp = torch.log_softmax(logits, dim=-1)
            logprobs[rows] = logp.gather(-1, targets[rows, None]).squeeze(-1)
            entropy[rows] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk = chunk
        device = hidden.device.type  # the backward recomputes the logits at the forward's precision (autocast)
        ctx.autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: torch.Tensor, _grad_entropy: torch.Tensor):  # type: ignore[override]
        hidden, weight, bias, targets = ctx.saved_tensors
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want_bias else None
        enabled, dtype = ctx.autocast
        with torch.autocast(hidden.device.type, dtype=dtype, enabled=enabled):
            for start in range(0, hidden.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                _chunk_backward(hidden[rows], weight, bias, targets[rows], grad_logprobs[rows],
                                None if grad_hidden is None else grad_hidden[rows], grad_weight, grad_bias)
        return (grad_hidden,
                None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype),
                None, None)


def _chunk_backward(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                    grad_logprobs: torch.Tensor, grad_hidden: torch.Tensor | None, grad_weight: torch.Tensor | None,
                    grad_bias: torch.Tensor | None) -> None:
    """One chunk's share of the gradient: written into ``grad_hidden``, added to ``grad_weight`` and ``grad_bias``."""
    logits = F.linear(hidden, weight, bias).float()
    # d logp[target] / d logits = onehot(target) - softmax(logits)
    grad_logits = -torch.softmax(logits, dim=-1)
    grad_logits.scatter_add_(-1, targets[:, None], torch.ones_like(grad_logits[:, :1]))
    grad_logits = (grad_logits * grad_logprobs[:, None]).to(hidden.dtype)  # autocast casts the products further
    if grad_hidden is not None:
        grad_hidden.copy_(grad_logits @ weight)
    if grad_weight is not None:
        grad_weight += (grad_logits.T @ hidden).float()
    if grad_bias is not None:
        grad_bias += grad_logits.float().sum(0)


def head_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                  chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The logprob of ``targets`` (N,) under ``head(hidden)`` for hidden states (N, H), and each position's
    entropy; differentiable in the logprobs, the (N, vocabulary) logits never whole. ``chunk``: positions per
    chunk (default: ``chunk_rows`` of the head's vocabulary)."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"head_logprobs: hidden must be (N, H) and targets (N,), got {tuple(hidden.shape)} "
                         f"and {tuple(targets.shape)}")
    rows = chunk_rows(head.out_features) if chunk is None else chunk
    if rows < 1:
        raise ValueError(f"head_logprobs: chunk must be >= 1 position, got {rows}")
    return _HeadLogprobs.apply(hidden, head.weight, head.bias, targets, rows)
