"""Batches of PCFG task examples: the pretraining mixture (with its sampling prior over operands)
and single-task fine-tuning sets with an optional planted spurious correlation.

Texts are windows of W tokens (paper: a random contiguous window of 250, App. B.2). A derivation of
the paper's grammar averages ≈ 276 terminals and about a quarter are shorter than 250; the paper
does not say how those are handled: here further derivations are appended until a row is long
enough (so short grammars, such as the random ones, work too), then the window is drawn."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from wrapperdist.settings.pcfg.grammar import EMPTY, Grammar, compact, sample_strings
from wrapperdist.settings.pcfg.names import TERMINALS, Family
from wrapperdist.settings.pcfg.tasks import Vocab, encode, labels, terminal_index

Batch = tuple[np.ndarray, np.ndarray]  # (tokens (n, W + 7) int64, answer tokens (n,) int64)


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

    def __init__(self, grammar: Grammar, window: int, count_window: int, index_k: int):
        if count_window > window:
            raise ValueError(f"count_window {count_window} exceeds the text window {window}")
        self.grammar, self.window, self.count_window, self.index_k = grammar, window, count_window, index_k
        self.vocab = Vocab(max_number=window)  # counts ≤ N ≤ W, positions ≤ W
        self.seq_len = window + 7

    def texts(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` windows of W terminal ids, each from one derivation (or several, appended, if short)."""
        strings, lengths = sample_strings(self.grammar, n, rng)
        for _ in range(64):
            short = np.flatnonzero(lengths < self.window)
            if short.size == 0:
                break
            more, more_len = sample_strings(self.grammar, short.size, rng)
            joined = np.full((n, strings.shape[1] + more.shape[1]), EMPTY, dtype=np.int64)
            joined[:, : strings.shape[1]] = strings
            joined[short, strings.shape[1]:] = more
            strings, lengths = compact(joined), lengths.copy()
            lengths[short] += more_len
        else:
            raise ValueError(f"the grammar's derivations are too short for a window of {self.window}")
        starts = (rng.random(n) * (lengths - self.window + 1)).astype(np.int64)
        return np.take_along_axis(strings, starts[:, None] + np.arange(self.window)[None, :], axis=1)

    def _encode(self, families: np.ndarray, operands: np.ndarray, texts: np.ndarray, answers: np.ndarray) -> Batch:
        return encode(self.vocab, families, operands, texts, answers, self.count_window, self.index_k)

    def mixture_batch(self, n: int, rng: np.random.Generator, family_weights: Mapping[Family, float],
                      prior: np.ndarray) -> Batch:
        """Pretraining data: family per example by `family_weights`, operand by the sampling `prior`."""
        texts = self.texts(n, rng)
        names = list(family_weights)
        weights = np.array([family_weights[f] for f in names], dtype=float)
        pick = rng.choice(len(names), size=n, p=weights / weights.sum())
        operands = rng.choice(len(TERMINALS), size=n, p=prior)
        families = np.array([self.vocab.families.index(names[i]) for i in pick], dtype=np.int64)
        answers = np.zeros(n, dtype=np.int64)
        for i, family in enumerate(names):
            rows = np.flatnonzero(pick == i)
            if rows.size:
                answers[rows] = labels(family, texts[rows], operands[rows], self.count_window, self.index_k)
        return self._encode(families, operands, texts, answers)

    def plant(self, texts: np.ndarray, task: TaskSpec, partner: TaskSpec, offset: int,
              rng: np.random.Generator) -> np.ndarray:
        """Make count(task) = count(partner) + offset hold within the last N positions (paper §2.4:
        "artificially adding O_FT tokens"): tokens that are neither operand become the task's operand
        where too few, the task's operand becomes the third token where too many. Rows that cannot be
        edited (too few third tokens) are redrawn. Returns edited copies."""
        if task.family is not Family.counter or partner.family is not Family.counter:
            raise ValueError("the planted correlation is defined for the counter (count(b) = count(a) + q); "
                             "the paper does not give the indexer's q")
        want, have = terminal_index(task.operand), terminal_index(partner.operand)
        other = next(i for i in range(len(TERMINALS)) if i not in (want, have))
        texts = texts.copy()
        todo = np.arange(len(texts))
        for _ in range(64):
            window = texts[todo, -self.count_window:]
            need = (window == have).sum(1) + offset - (window == want).sum(1)
            source = np.where(need[:, None] > 0, window == other, window == want)
            ranks = np.argsort(np.argsort(np.where(source, rng.random(window.shape), 2.0), axis=1), axis=1)
            change = source & (ranks < np.abs(need)[:, None])
            window[change & (need[:, None] > 0)] = want
            window[change & (need[:, None] < 0)] = other
            texts[todo, -self.count_window:] = window
            failed = source.sum(1) < np.abs(need)
            todo = todo[failed]
            if todo.size == 0:
                return texts
            texts[todo] = self.texts(todo.size, rng)
        raise ValueError(f"{task} = {partner} + {offset} could not be planted in the last {self.count_window} tokens")

    def relation_holds(self, texts: np.ndarray, task: TaskSpec, partner: TaskSpec, offset: int) -> np.ndarray:
        """Per row, whether the planted relation count(task) = count(partner) + offset holds within the
        last N positions (paper §2.4): the property C_Te = 1 has on every row and C_Te = 0 on none."""
        if task.family is not Family.counter or partner.family is not Family.counter:
            raise ValueError("the planted relation is defined for the counter only")
        window = texts[:, -self.count_window:]
        want, have = terminal_index(task.operand), terminal_index(partner.operand)
        return (window == want).sum(1) == (window == have).sum(1) + offset

    def texts_without(self, n: int, rng: np.random.Generator, task: TaskSpec, partner: TaskSpec, offset: int,
                      max_rounds: int = 64) -> np.ndarray:
        """`n` plain windows on which the planted relation does NOT hold (the paper's C_Te = 0: its
        Tab. 5 reports O_FT ≈ 0 on C_Te = 0 for the models that learnt count(a) + 1, impossible on plain
        text, where the relation holds by chance on ~1 string in 4 at N = 16). Rejection sampling: plain
        windows are drawn, those on which the relation holds are dropped. That is exactly the grammar's
        distribution conditioned on the relation failing; editing tokens to break it (as `plant` does to
        make it) would move the strings off the grammar and bias the counts. Seeded by `rng`; each round
        draws `n` windows and keeps ~3 in 4, so a few rounds suffice; a grammar on which the relation
        (almost) always holds is an error, not an endless loop."""
        kept, have = [], 0
        for _ in range(max_rounds):
            texts = self.texts(n, rng)
            texts = texts[~self.relation_holds(texts, task, partner, offset)]
            kept.append(texts)
            have += len(texts)
            if have >= n:
                return np.concatenate(kept)[:n]
        raise ValueError(f"{task} = {partner} + {offset} holds on almost every window of the last "
                         f"{self.count_window} tokens: {have} of {n * max_rounds} draws failed it, {n} needed")

    def texts_of(self, tokens: np.ndarray) -> np.ndarray:
        """The terminal ids of encoded examples' texts (the inverse of the layout's text slot)."""
        return tokens[:, 5:-2] - self.vocab.terminal_offset

    def labelled(self, texts: np.ndarray, task: TaskSpec) -> Batch:
        """Examples of `task` on the given texts."""
        operands = np.full(len(texts), terminal_index(task.operand), dtype=np.int64)
        answers = labels(task.family, texts, operands, self.count_window, self.index_k)
        families = np.full(len(texts), self.vocab.families.index(task.family), dtype=np.int64)
        return self._encode(families, operands, texts, answers)

    def task_batch(self, n: int, rng: np.random.Generator, task: TaskSpec, spurious_fraction: float = 0.0,
                   partner: TaskSpec | None = None, offset: int = 1) -> Batch:
        """Fine-tuning / evaluation data for one task. Each example carries, with probability
        `spurious_fraction`, the planted relation answer(task) = answer(partner) + offset."""
        if task.family is Family.token_at_index:
            raise ValueError("token_at_index has no operand; it is a pretraining-mix task only")
        texts = self.texts(n, rng)
        if spurious_fraction > 0:
            if partner is None:
                raise ValueError("a spurious correlation needs the partner (pretraining) task")
            correlated = np.flatnonzero(rng.random(n) < spurious_fraction)
            if correlated.size:
                texts[correlated] = self.plant(texts[correlated], task, partner, offset, rng)
        return self.labelled(texts, task)
