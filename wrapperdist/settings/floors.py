"""Floors beside every accuracy: what an accuracy of a setting whose examples are (tokens, answer)
must beat before it says anything about a model. Pure functions over the held-out sets (no MLflow):
the pretraining and fine-tuning stages log them at step 0 and the analysis logs them again, each
through its sink, so every run a table reads carries them.

Metric names (<metric> is an evaluation key: pt_acc, ft_acc, pt_acc_spurious, ...):

  floor.modal.<metric>       accuracy of the constant predictor that always gives the most common
                             answer of <metric>'s set, counted from the set's labels
  floor.relation.<metric>    share of <metric>'s examples on which the setting's planted relation holds
                             (count(O_FT) = count(O_PT) + q; Tracr: r(x, O_FT) - r(x, O_PT) = q),
                             measured from the encoded tokens, not taken from the construction: the
                             chance rate on plain text, and 0 on C_Te = 0 and 1 on C_Te = 1 where the
                             sets are built right. Absent where the setting plants no relation.
  floor.random_init.<metric> accuracy of a freshly initialised model of the same shape (seeded
                             `random_init_seed`: the analysis's own random-init model)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from wrapperdist.config import ExperimentConfig
from wrapperdist.models import HookedModule, random_like
from wrapperdist.train import answer_accuracy

Sets = Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # metric -> (tokens, answers), as eval_tensors gives them
RelationHolds = Callable[[np.ndarray], "np.ndarray | None"]  # encoded tokens -> per row, does the relation hold


def random_init_seed(cfg: ExperimentConfig) -> int:
    """The seed of the random-init model: the analysis's Scr. start and probe floor, and the floor here."""
    return cfg.seed + 1


def modal_accuracy(answers: np.ndarray | torch.Tensor) -> float:
    """Accuracy of always answering the most common answer of `answers`."""
    values = np.asarray(answers)
    if values.size == 0:
        return 0.0
    return float(np.unique(values, return_counts=True)[1].max() / values.size)


def modal_floors(sets: Sets) -> dict[str, float]:
    return {f"floor.modal.{key}": modal_accuracy(answers) for key, (_, answers) in sets.items()}


def relation_floors(sets: Sets, relation_holds: RelationHolds | None) -> dict[str, float]:
    """The share of each set on which the relation holds; {} where the setting has none."""
    if relation_holds is None:
        return {}
    out = {}
    for key, (tokens, _) in sets.items():
        holds = relation_holds(np.asarray(tokens))
        if holds is not None:
            out[f"floor.relation.{key}"] = float(np.mean(holds)) if len(holds) else 0.0
    return out


def random_init_floors(sets: Sets, random_init: torch.nn.Module) -> dict[str, float]:
    return {f"floor.random_init.{key}": answer_accuracy(random_init, tokens, answers)
            for key, (tokens, answers) in sets.items()}


def fresh_model(model: HookedModule, seed: int) -> HookedModule:
    """`random_like(model, seed)` without touching the caller's torch RNG: a stage that logs floors
    before training must train exactly as it would without them."""
    with torch.random.fork_rng():
        return random_like(model, seed)


def answer_floors(sets: Sets, relation_holds: RelationHolds | None, random_init: torch.nn.Module) -> dict[str, float]:
    """All three floors of every set."""
    return {**modal_floors(sets), **relation_floors(sets, relation_holds), **random_init_floors(sets, random_init)}
