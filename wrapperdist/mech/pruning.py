"""Pruning MLP units of a fine-tuned model to revive the pretraining capability.

Two methods, labelled as what they are:

* `grad_x_weight_scores` — the paper's (App. D): **one step**; the gradient of the *pretraining-task*
  loss scores each unit by gradient·weight and the top-K are removed. For an MLP unit we take the
  gradient of the loss with respect to a multiplicative mask on the unit's output at mask = 1, which
  equals Σ_i W_out[i, j]·∂L/∂W_out[i, j], the dot product of the unit's outgoing weights with their
  gradient. By first-order Taylor, removing unit j changes the loss by ≈ −score_j, so the largest
  scores are the removals that most lower the pretraining loss.
* `learned_removal_mask` — a learned mask by continuous sparsification (Savarese et al. 2020, the
  method behind Lepori et al.'s "Break It Down"): one logit per unit, mask = σ(β·s) with β annealed
  upward so the mask becomes binary; trained, weights frozen, to minimise the pretraining-task loss
  plus a penalty on the number of units removed. Units are then ranked by how firmly they were removed.

Both give a ranking of (layer, unit) pairs; `removal_curve` evaluates removing the top-K of any
ranking, and `random_ranking` is the equal-size control.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from wrapperdist.models.hooks import HookedModule

Unit = tuple[int, int]  # (layer, unit index)


@contextmanager
def units_removed(model: HookedModule, units: Sequence[Unit]) -> Iterator[None]:
    """Zero the given MLP units for the duration of the block."""
    widths = model.mlp_widths()
    masks = [torch.ones(w) for w in widths]
    for layer, idx in units:
        masks[layer][idx] = 0.0
    for layer, mask in enumerate(masks):
        model.set_mask(model.mlp_hidden_name(layer), mask)
    try:
        yield
    finally:
        model.clear_masks()


def grad_x_weight_scores(model: HookedModule, tokens: torch.Tensor, answers: torch.Tensor) -> list[torch.Tensor]:
    """Per-layer scores (d_mlp,) from one backward pass of the pretraining-task loss."""
    masks = [torch.ones(w, requires_grad=True) for w in model.mlp_widths()]
    model.eval()
    for layer, mask in enumerate(masks):
        model.set_mask(model.mlp_hidden_name(layer), mask)
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(model(tokens, last_only=True), answers)
            grads = torch.autograd.grad(loss, masks)
    finally:
        model.clear_masks()
    return [g.detach() for g in grads]


def rank_units(scores: Sequence[torch.Tensor]) -> list[Unit]:
    """All units, highest score first."""
    flat = torch.cat([s.flatten() for s in scores])
    owners = [(layer, i) for layer, s in enumerate(scores) for i in range(s.numel())]
    return [owners[int(j)] for j in torch.argsort(flat, descending=True, stable=True)]


def random_ranking(model: HookedModule, seed: int) -> list[Unit]:
    units = [(layer, i) for layer, w in enumerate(model.mlp_widths()) for i in range(w)]
    order = np.random.default_rng(seed).permutation(len(units))
    return [units[i] for i in order]


@dataclass
class CurvePoint:
    k: int
    metrics: dict[str, float]


def removal_curve(
    model: HookedModule, ranking: Sequence[Unit], ks: Sequence[int],
    evaluate: Callable[[torch.nn.Module], dict[str, float]],
) -> list[CurvePoint]:
    """Evaluate the model with the first k units of `ranking` removed, for each k."""
    points = []
    for k in ks:
        with units_removed(model, ranking[:k]):
            points.append(CurvePoint(k, evaluate(model)))
    return points


@dataclass
class LearnedMask:
    ranking: list[Unit]  # most firmly removed first
    removed: list[Unit]  # units whose final mask is < 0.5
    logits: list[torch.Tensor]


def learned_removal_mask(
    model: HookedModule,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int = 300,
    lr: float = 0.05,
    penalty: float = 1.0,
    init_logit: float = 2.0,
    beta_final: float = 50.0,
) -> LearnedMask:
    """Continuous sparsification over MLP units: minimise PT loss + penalty · (mean units removed)."""
    widths = model.mlp_widths()
    logits = [torch.full((w,), init_logit, requires_grad=True) for w in widths]
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    opt = torch.optim.Adam(logits, lr=lr)
    n_units = float(sum(widths))
    try:
        with torch.enable_grad():
            for step in range(steps):
                beta = beta_final ** (step / max(1, steps - 1))  # 1 → beta_final, geometric
                masks = [torch.sigmoid(beta * s) for s in logits]
                for layer, m in enumerate(masks):
                    model.set_mask(model.mlp_hidden_name(layer), m)
                tokens, answers = next(batches)
                task_loss = F.cross_entropy(model(tokens, last_only=True), answers)
                removed = sum((1 - m).sum() for m in masks) / n_units
                loss = task_loss + penalty * removed
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        model.clear_masks()
        for p, req in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(req)
    final = [s.detach() for s in logits]
    ranking = rank_units([-s for s in final])  # lowest logit = most firmly removed
    removed = [u for u in ranking if final[u[0]][u[1]] < 0]
    return LearnedMask(ranking=ranking, removed=removed, logits=final)
