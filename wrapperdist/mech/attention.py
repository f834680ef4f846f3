"""Attention maps (paper Fig. 10): per-layer, per-head attention patterns for a fixed batch of
prompts, pretrained vs fine-tuned, and how far each head moved."""

from __future__ import annotations

import torch

from wrapperdist.models.hooks import HookedModule


@torch.no_grad()
def attention_patterns(model: HookedModule, tokens: torch.Tensor) -> torch.Tensor:
    """(n_layer, B, n_head, T, T) attention probabilities."""
    names = model.pattern_names()
    model.eval()
    with model.capture(names) as cache:
        model(tokens)
    return torch.stack([cache[n].detach() for n in names])


def pattern_shift(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(n_layer, n_head) mean total-variation distance between two models' attention rows at the
    answer position (0 = identical, 1 = disjoint); averages over the batch."""
    p, q = before[:, :, :, -1, :], after[:, :, :, -1, :]
    return 0.5 * (p - q).abs().sum(-1).mean(1)
