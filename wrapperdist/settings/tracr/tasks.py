"""Data for the compiled programs: random token sequences and the exact answer of a target.

Sequences are left-padded and right-aligned like the PCFG encoding (`PAD* BOS s_1 .. s_n`), so the
answer is read at the last position by the same loss, evaluation, probes and pruning code. The
compiled model masks PAD keys and counts positions from BOS, so padding changes nothing it computes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROGRAMS = ("counter", "max_identifier")
BOS, PAD = "BOS", "PAD"


@dataclass(frozen=True)
class TracrTarget:
    """What a compiled model (or a fine-tune) should output at every position:
    counter → the number of occurrences of `arg` (a token); max_identifier → the `arg` ("max" or
    "min") of the sequence, with tokens ordered as listed in the vocabulary."""

    program: str
    arg: str

    def __post_init__(self) -> None:
        if self.program not in PROGRAMS:
            raise ValueError(f"unknown Tracr program {self.program!r}; known: {PROGRAMS}")
        if self.program == "max_identifier" and self.arg not in ("max", "min"):
            raise ValueError(f"max_identifier targets are 'max' or 'min', got {self.arg!r}")


def reference_answer(target: TracrTarget, sequence: Sequence[str], tokens: Sequence[str]) -> str | int:
    """The exact answer, computed directly (the ground truth the compiled model is tested against)."""
    if target.program == "counter":
        return sum(1 for s in sequence if s == target.arg)
    rank = {t: i for i, t in enumerate(tokens)}
    pick = max if target.arg == "max" else min
    return pick(sequence, key=rank.__getitem__)


@dataclass(frozen=True)
class TracrVocab:
    """Token ids as the compiler assigned them, and the answer classes (the output space's values)."""

    token_ids: dict[str, int]  # includes BOS and PAD
    bos: str
    pad: str
    answers: tuple[str | int, ...]  # class index -> value

    @property
    def size(self) -> int:
        return len(self.token_ids)

    @property
    def max_number(self) -> int:
        """Largest answer class (probes size their output layer from it, as for the PCFG vocab)."""
        return len(self.answers) - 1

    def decode(self, token_id: int) -> str:
        return next(t for t, i in self.token_ids.items() if i == token_id)


def tracr_vocab(program: str, tokens: Sequence[str], max_len: int) -> TracrVocab:
    """The fixed layout every compiled model is re-indexed to: the tokens in listed order, then BOS
    and PAD; answers are counts 0..max_len (counter) or the tokens themselves (max_identifier)."""
    ids = {t: i for i, t in enumerate(tokens)} | {BOS: len(tokens), PAD: len(tokens) + 1}
    answers = tuple(range(max_len + 1)) if program == "counter" else tuple(tokens)
    return TracrVocab(ids, BOS, PAD, answers)


class TracrTasks:
    """Random sequences over the program's tokens, lengths uniform in [min_len, max_len]."""

    def __init__(self, vocab: TracrVocab, tokens: Sequence[str], min_len: int, max_len: int):
        self.vocab, self.tokens = vocab, list(tokens)
        self.min_len, self.max_len = min_len, max_len
        self.seq_len = max_len + 1  # BOS + the longest sequence
        self._answer_index = {v: i for i, v in enumerate(vocab.answers)}
        self._token_ids = np.array([vocab.token_ids[t] for t in self.tokens])

    def sample(self, n: int, rng: np.random.Generator) -> list[list[str]]:
        lengths = rng.integers(self.min_len, self.max_len + 1, size=n)
        return [[self.tokens[i] for i in rng.integers(0, len(self.tokens), size=k)] for k in lengths]

    def encode(self, sequences: list[list[str]]) -> np.ndarray:
        out = np.full((len(sequences), self.seq_len), self.vocab.token_ids[self.vocab.pad], dtype=np.int64)
        for row, seq in enumerate(sequences):
            ids = [self.vocab.token_ids[self.vocab.bos], *(self.vocab.token_ids[s] for s in seq)]
            out[row, self.seq_len - len(ids):] = ids
        return out

    def task_batch(self, n: int, rng: np.random.Generator, task: TracrTarget) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (n, seq_len), answer class (n,)) for random sequences."""
        sequences = self.sample(n, rng)
        answers = [self._answer_index[reference_answer(task, s, self.tokens)] for s in sequences]
        return self.encode(sequences), np.array(answers, dtype=np.int64)
