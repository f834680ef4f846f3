"""Reverse fine-tuning (reFT) bookkeeping: how many steps until the pretraining capability is back.

The reFT runs themselves are ordinary training runs of the pretraining-capability task (the same
loop as fine-tuning); this module only reads their curves."""

from __future__ import annotations

from collections.abc import Sequence


def steps_to_reach(curve: Sequence[tuple[int, float]], threshold: float) -> int | None:
    """First evaluated step at which accuracy >= threshold (None if never within the budget)."""
    for step, value in curve:
        if value >= threshold:
            return step
    return None

