"""Pruning a fine-tuned model to revive the pretraining capability.

The paper's method (App. D, Alg. 3) on its unit — a row of any weight matrix — is `row_scores` /
`rows_removed` at the end of this module. On MLP hidden units, two methods, labelled as what they are:

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
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
    model: HookedModule, ranking: Sequence, ks: Sequence[int],
    evaluate: Callable[[torch.nn.Module], dict[str, float]], remove: Callable | None = None,
) -> list[CurvePoint]:
    """Evaluate the model with the first k entries of `ranking` removed, for each k. `remove` is the
    context manager that removes them: MLP units (default) or weight rows (`rows_removed`)."""
    remove = remove or units_removed
    points = []
    for k in ks:
        with remove(model, ranking[:k]):
            points.append(CurvePoint(k, evaluate(model)))
    return points


@dataclass
class HeldOutGain:
    k: int  # the K that maximised `selection_key` on the selection split
    gain: float  # scored_key(K) - scored_key(0): the gain on a set that played no part in choosing K
    selection_gain: float  # the same on the selection split (optimistic by construction)


def held_out_gain(curve: Sequence[CurvePoint], selection_key: str, scored_key: str, max_k: int) -> HeldOutGain:
    """Pick K <= max_k on one split and report the gain at that K on another. The best-K gain read off
    the set that picked K is biased upward (the max of noisy values); this one is not. Ties go to the
    smallest K (the thinner wrapper)."""
    candidates = [p for p in curve if p.k <= max_k]
    if not candidates:
        raise ValueError(f"no pruning point with K <= {max_k}")
    base = curve[0].metrics
    best = max(candidates, key=lambda p: (p.metrics[selection_key], -p.k))
    return HeldOutGain(best.k, best.metrics[scored_key] - base[scored_key],
                       best.metrics[selection_key] - base[selection_key])


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


# ---------------------------------------------------------------------------------------------------
# The paper's unit for the PCFG models (App. D, Alg. 3): a "neuron" is one row of a weight matrix.

Row = tuple[str, int]  # (weight parameter name, row index)


Scope = Literal["blocks", "all"]


def weight_matrices(model: nn.Module, scope: Scope = "all") -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """The weight matrices units can be pruned from, with the bias that goes with their rows (a
    Linear's bias element i belongs to output row i). `blocks`: the attention and MLP matrices of
    the transformer blocks. `all`: also the token / position embeddings and the unembedding — whose
    rows are input tokens, positions and answer classes, so zeroing one deletes a token or an answer
    rather than part of a circuit. LayerNorm gains and biases are vectors, never eligible."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for name, module in model.named_modules():
        if scope == "blocks" and not name.startswith("blocks."):
            continue
        if isinstance(module, nn.Linear | nn.Embedding) and module.weight.requires_grad:
            bias = getattr(module, "bias", None)
            out[f"{name}.weight"] = (module.weight, bias if isinstance(bias, torch.Tensor) else None)
    return out


def row_scores(model: nn.Module, tokens: torch.Tensor, answers: torch.Tensor,
               scope: Scope = "all") -> dict[str, torch.Tensor]:
    """Alg. 3's one step: gradient·weight of the pretraining-task cross-entropy, summed over each row
    (and its bias element). By first-order Taylor, zeroing row i changes the loss by ≈ −score_i, so
    the highest scores are the removals that most lower the pretraining loss."""
    matrices = weight_matrices(model, scope)
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        F.cross_entropy(model(tokens, last_only=True), answers).backward()
    scores = {}
    for name, (weight, bias) in matrices.items():
        score = (weight.grad * weight).sum(1).detach()
        if bias is not None and bias.grad is not None:
            score = score + (bias.grad * bias).detach()
        scores[name] = score
    model.zero_grad(set_to_none=True)
    return scores


def rank_rows(scores: dict[str, torch.Tensor]) -> list[Row]:
    """Every entry of the scores — rows of every eligible matrix, or single weights (flat indices) —
    highest score first, as (parameter name, index)."""
    flat = torch.cat(list(scores.values()))
    owners = [(name, i) for name, s in scores.items() for i in range(s.numel())]
    return [owners[int(j)] for j in torch.argsort(flat, descending=True, stable=True)]


def random_row_ranking(model: nn.Module, seed: int, scope: Scope = "all") -> list[Row]:
    rows = [(name, i) for name, (weight, _) in weight_matrices(model, scope).items() for i in range(weight.shape[0])]
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


@contextmanager
def rows_removed(model: nn.Module, rows: Sequence[Row]) -> Iterator[None]:
    """Zero the given rows (and their bias elements) for the duration of the block."""
    matrices = weight_matrices(model)
    saved = []
    with torch.no_grad():
        for name, i in rows:
            weight, bias = matrices[name]
            saved.append((weight, i, weight[i].clone(), bias, None if bias is None else bias[i].clone()))
            weight[i] = 0.0
            if bias is not None:
                bias[i] = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, i, old, bias, old_bias in reversed(saved):
                weight[i] = old
                if bias is not None:
                    bias[i] = old_bias


# The paper's unit for the compiled (Tracr) models (App. D): single weights.

Weight = tuple[str, int]  # (weight parameter name, flat index into it)


def weight_scores(model: nn.Module, tokens: torch.Tensor, answers: torch.Tensor,
                  scope: Scope = "all") -> dict[str, torch.Tensor]:
    """Alg. 3 on single weights: gradient·weight of the pretraining-task cross-entropy, elementwise
    (flattened), for every weight matrix `weight_matrices` names."""
    matrices = weight_matrices(model, scope)
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        F.cross_entropy(model(tokens, last_only=True), answers).backward()
    scores = {name: (weight.grad * weight).detach().flatten() for name, (weight, _) in matrices.items()}
    model.zero_grad(set_to_none=True)
    return scores


def random_weight_ranking(model: nn.Module, seed: int, scope: Scope = "all") -> list[Weight]:
    sizes = [(name, weight.numel()) for name, (weight, _) in weight_matrices(model, scope).items()]
    total = sum(n for _, n in sizes)
    picks = np.random.default_rng(seed).permutation(total)[:1000]  # removal curves never go near all of them
    bounds = np.cumsum([0] + [n for _, n in sizes])
    out = []
    for flat in picks:
        i = int(np.searchsorted(bounds, flat, side="right")) - 1
        out.append((sizes[i][0], int(flat - bounds[i])))
    return out


def weight_label(model: nn.Module, weight: Weight) -> str:
    """`blocks.1.attn.v.weight[97, 0]`: the paper's (block, matrix, index) naming of a pruned weight."""
    name, flat = weight
    tensor = weight_matrices(model)[name][0]
    index = np.unravel_index(flat, tuple(tensor.shape))
    return f"{name}[{', '.join(str(int(i)) for i in index)}]"


@contextmanager
def weights_removed(model: nn.Module, weights: Sequence[Weight]) -> Iterator[None]:
    """Zero the given single weights for the duration of the block."""
    matrices = weight_matrices(model)
    saved = []
    with torch.no_grad():
        for name, flat in weights:
            tensor = matrices[name][0].view(-1)
            saved.append((tensor, flat, tensor[flat].clone()))
            tensor[flat] = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, flat, old in reversed(saved):
                tensor[flat] = old
