"""Batches of PCFG task examples: the pretraining mixture (with its sampling prior over operands)
and single-task fine-tuning sets with an optional planted spurious correlation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from wrapperdist.settings.pcfg.grammar import EMPTY, TERMINALS, Grammar, sample_strings
from wrapperdist.settings.pcfg.tasks import NO_ANSWER, Family, Vocab, encode, labels, terminal_index

Batch = tuple[np.ndarray, np.ndarray]  # (tokens (n, T) int64, answer tokens (n,) int64)


@dataclass(frozen=True)
class TaskSpec:
    """One task: a family and an operand terminal (e.g. counter of `a`)."""

    family: Family
    operand: str

    def __str__(self) -> str:
        return f"{self.family}({self.operand})"


class PCFGTasks:
    """Turns grammar samples into encoded task examples. All randomness comes from the caller's rng,
    so a seed fixes every batch."""

    def __init__(self, grammar: Grammar, min_len: int, max_len: int, index_k: int):
        self.grammar = grammar
        self.min_len, self.max_len, self.index_k = min_len, max_len, index_k
        self.vocab = Vocab(max_number=max_len)
        self.seq_len = max_len + 4

    def strings(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`n` sentences with min_len <= length <= max_len (rejection on length), padded to max_len."""
        out = np.full((n, self.max_len), EMPTY, dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        filled = 0
        for _ in range(1000):
            draw, draw_len = sample_strings(self.grammar, max(2 * (n - filled), 64), rng)
            keep = (draw_len >= self.min_len) & (draw_len <= self.max_len)
            take = min(int(keep.sum()), n - filled)
            idx = np.flatnonzero(keep)[:take]
            width = min(draw.shape[1], self.max_len)
            out[filled : filled + take, :width] = draw[idx, :width]
            lengths[filled : filled + take] = draw_len[idx]
            filled += take
            if filled == n:
                return out, lengths
        raise ValueError(
            f"the grammar rarely yields strings of length {self.min_len}..{self.max_len}; widen the range"
        )

    def _operands(self, family: Family, n: int, prior: np.ndarray, lengths: np.ndarray, rng) -> np.ndarray:
        if family is Family.token_at_index:
            return (rng.random(n) * lengths).astype(np.int64)
        return rng.choice(len(TERMINALS), size=n, p=prior)

    def mixture_batch(
        self, n: int, rng: np.random.Generator, family_weights: Mapping[Family, float], prior: np.ndarray
    ) -> Batch:
        """Pretraining data: family per example by `family_weights`, operand by the sampling `prior`."""
        strings, lengths = self.strings(n, rng)
        names = list(family_weights)
        weights = np.array([family_weights[f] for f in names], dtype=float)
        pick = rng.choice(len(names), size=n, p=weights / weights.sum())
        families = np.zeros(n, dtype=np.int64)
        operands = np.zeros(n, dtype=np.int64)
        answers = np.zeros(n, dtype=np.int64)
        for i, family in enumerate(names):
            rows = np.flatnonzero(pick == i)
            if rows.size == 0:
                continue
            ops = self._operands(family, rows.size, prior, lengths[rows], rng)
            families[rows] = self.vocab.families.index(family)
            operands[rows] = ops
            answers[rows] = labels(family, strings[rows], ops, self.index_k)
        return encode(self.vocab, families, operands, strings, lengths, answers, self.max_len)

    def _correlated_strings(
        self, n: int, rng: np.random.Generator, task: TaskSpec, partner: TaskSpec, offset: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Strings on which answer(task) == answer(partner) + offset: the planted spurious correlation."""
        out = np.full((n, self.max_len), EMPTY, dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        filled = 0
        for _ in range(1000):
            s, ln = self.strings(max(4 * (n - filled), 256), rng)
            a = labels(task.family, s, np.full(len(s), terminal_index(task.operand)), self.index_k)
            b = labels(partner.family, s, np.full(len(s), terminal_index(partner.operand)), self.index_k)
            idx = np.flatnonzero((a == b + offset) & (b != NO_ANSWER) & (a != NO_ANSWER))[: n - filled]
            out[filled : filled + idx.size] = s[idx]
            lengths[filled : filled + idx.size] = ln[idx]
            filled += idx.size
            if filled == n:
                return out, lengths
        raise ValueError(f"{task} = {partner} + {offset} almost never holds under this grammar")

    def task_batch(
        self,
        n: int,
        rng: np.random.Generator,
        task: TaskSpec,
        spurious_fraction: float = 0.0,
        partner: TaskSpec | None = None,
        offset: int = 1,
    ) -> Batch:
        """Fine-tuning / evaluation data for one task. Each example is drawn, with probability
        `spurious_fraction`, from strings where answer(task) = answer(partner) + offset."""
        if task.family is Family.token_at_index:
            raise ValueError("token_at_index takes a position operand; it is a pretraining-mix task only")
        strings, lengths = self.strings(n, rng)
        if spurious_fraction > 0:
            if partner is None:
                raise ValueError("a spurious correlation needs the partner (pretraining) task")
            correlated = np.flatnonzero(rng.random(n) < spurious_fraction)
            if correlated.size:
                strings[correlated], lengths[correlated] = self._correlated_strings(
                    correlated.size, rng, task, partner, offset
                )
        operands = np.full(n, terminal_index(task.operand), dtype=np.int64)
        answers = labels(task.family, strings, operands, self.index_k)
        families = np.full(n, self.vocab.families.index(task.family), dtype=np.int64)
        return encode(self.vocab, families, operands, strings, lengths, answers, self.max_len)

