"""The PCFG setting's vocabulary of names: terminals and task families (stdlib only, so the
setting's config section can use them without importing the data code)."""

from __future__ import annotations

from enum import StrEnum

TERMINALS: tuple[str, ...] = ("a", "b", "c")


class Family(StrEnum):
    counter = "counter"
    count_composition = "count_composition"
    index_of_occurrence = "index_of_occurrence"
    index_of_composition = "index_of_composition"
    token_at_index = "token_at_index"
