"""Data for the compiled programs: random token sequences, the exact answer of a target, and the
paper's planted spurious correlation (Sec. 4, App. B.1).

Sequences are left-padded and right-aligned like the PCFG encoding (`PAD* BOS s_1 .. s_n`), so the
answer is read at the last position by the same loss, evaluation, probes and pruning code. The
compiled model masks PAD keys and counts positions from BOS, so padding changes nothing it computes.

The correlation, r(x, O_FT) - r(x, O_PT) = q:
- Counter: r(x, t) = the number of t's, so count(O_FT) = count(O_PT) + q.
- Max-identifier: r(x, k) = the alphabet index of the k-th largest token (earlier letters are larger),
  so with q = 1 and O_FT = O_PT + 1 the O_FT-th largest is the letter right after the O_PT-th.
A planted sequence is drawn from the uniform distribution *conditioned* on the relation (exactly, by
weighting every feasible count or index by its number of sequences), and a C_Te = 0 sequence from the
uniform distribution conditioned on its failing (rejection), so C_Te = 1 differs from C_Te = 0 in the
relation alone; plain sequences hold it by chance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb, lgamma, log

import numpy as np

PROGRAMS = ("counter", "max_identifier")
BOS, PAD = "BOS", "PAD"


@dataclass(frozen=True)
class TracrTarget:
    """What a compiled model (or a fine-tune) should output at every position: counter → the number
    of occurrences of `arg` (a token); max_identifier → the `arg`-th largest token (arg a rank "1",
    "2", ...; earlier tokens in the vocabulary are larger, as a > b > ... in the paper)."""

    program: str
    arg: str

    def __post_init__(self) -> None:
        if self.program not in PROGRAMS:
            raise ValueError(f"unknown Tracr program {self.program!r}; known: {PROGRAMS}")
        if self.program == "max_identifier" and not (self.arg.isdigit() and int(self.arg) >= 1):
            raise ValueError(f"max_identifier targets are ranks 1, 2, ..., got {self.arg!r}")

    @property
    def rank(self) -> int:
        return int(self.arg)


def reference_answer(target: TracrTarget, sequence: Sequence[str], tokens: Sequence[str]) -> str | int:
    """The exact answer, computed directly (the ground truth the compiled model is tested against)."""
    if target.program == "counter":
        return sum(1 for s in sequence if s == target.arg)
    order = {t: i for i, t in enumerate(tokens)}
    return sorted(sequence, key=order.__getitem__)[target.rank - 1]


def relation_value(pt: TracrTarget, ft: TracrTarget, sequence: Sequence[str], tokens: Sequence[str]) -> int:
    """r(x, O_FT) - r(x, O_PT): the quantity the planted correlation fixes to q."""
    a, b = reference_answer(pt, sequence, tokens), reference_answer(ft, sequence, tokens)
    if pt.program == "counter":
        return int(b) - int(a)
    return list(tokens).index(b) - list(tokens).index(a)


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


def _sample_index(log_weights: list[float], rng: np.random.Generator) -> int:
    w = np.array(log_weights)
    if not np.isfinite(w).any():
        raise ValueError("no sequence of this length satisfies the planted relation")
    p = np.exp(w - w[np.isfinite(w)].max())
    return int(rng.choice(len(p), p=p / p.sum()))


class TracrTasks:
    """Random sequences over the program's tokens, lengths uniform in [min_len, max_len]; with
    replacement for the counter (a-i in the paper), without for the max-identifier (26 letters)."""

    def __init__(self, vocab: TracrVocab, tokens: Sequence[str], min_len: int, max_len: int, replacement: bool = True):
        self.vocab, self.tokens = vocab, list(tokens)
        self.min_len, self.max_len, self.replacement = min_len, max_len, replacement
        self.seq_len = max_len + 1  # BOS + the longest sequence
        self._answer_index = {v: i for i, v in enumerate(vocab.answers)}

    def _lengths(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.min_len, self.max_len + 1, size=n)

    def sample(self, n: int, rng: np.random.Generator) -> list[list[str]]:
        if self.replacement:
            return [[self.tokens[i] for i in rng.integers(0, len(self.tokens), size=k)] for k in self._lengths(n, rng)]
        return [[self.tokens[i] for i in rng.permutation(len(self.tokens))[:k]] for k in self._lengths(n, rng)]

    def sample_planted(self, n: int, rng: np.random.Generator, pt: TracrTarget, ft: TracrTarget,
                       q: int) -> list[list[str]]:
        """n sequences from the uniform distribution conditioned on r(x, O_FT) - r(x, O_PT) = q."""
        plant = self._plant_count if pt.program == "counter" else self._plant_rank
        return [plant(int(length), rng, pt, ft, q) for length in self._lengths(n, rng)]

    def _plant_count(self, length: int, rng: np.random.Generator, pt: TracrTarget, ft: TracrTarget,
                     q: int) -> list[str]:
        """count(ft) = count(pt) + q: k (pt's count) weighted by the multinomial number of sequences
        with k pt's, k + q ft's and the rest other tokens; then positions and other tokens uniform."""
        others = [t for t in self.tokens if t not in (pt.arg, ft.arg)]
        n_tok = len(self.tokens)
        logs = []
        for k in range(length + 1):
            rest = length - 2 * k - q
            if k + q < 0 or rest < 0 or (rest > 0 and not others):
                logs.append(-np.inf)
                continue
            logs.append(lgamma(length + 1) - lgamma(k + 1) - lgamma(k + q + 1) - lgamma(rest + 1)
                        + (2 * k + q) * log(1 / n_tok) + (rest * log(len(others) / n_tok) if rest else 0.0))
        k = _sample_index(logs, rng)
        seq = [pt.arg] * k + [ft.arg] * (k + q) + [others[i] for i in rng.integers(0, max(1, len(others)),
                                                                                   size=length - 2 * k - q)]
        return [seq[i] for i in rng.permutation(length)]

    def _plant_rank(self, length: int, rng: np.random.Generator, pt: TracrTarget, ft: TracrTarget,
                    q: int) -> list[str]:
        """index(ft-th largest) - index(pt-th largest) = q, without replacement: choose the smaller
        index i (weighted by how many sets complete it), then the tokens above, between and below."""
        (r1, i_off1), (r2, i_off2) = sorted([(pt.rank, 0), (ft.rank, q)])
        gap = i_off2 - i_off1  # index distance from the higher-ranked token to the lower-ranked one
        n = len(self.tokens)
        logs = []
        for i in range(n):
            j = i + gap
            ways = (comb(i, r1 - 1) * comb(max(0, j - i - 1), r2 - r1 - 1) * comb(max(0, n - 1 - j), length - r2)
                    if 0 <= j < n else 0)
            logs.append(log(ways) if ways > 0 else -np.inf)
        i = _sample_index(logs, rng)
        j = i + gap
        chosen = [i, j, *rng.choice(i, r1 - 1, replace=False), *rng.choice(np.arange(i + 1, j), r2 - r1 - 1,
                                                                               replace=False),
                  *rng.choice(np.arange(j + 1, n), length - r2, replace=False)]
        return [self.tokens[int(c)] for c in rng.permutation(chosen)]

    def relation_holds(self, sequences: list[list[str]], pt: TracrTarget, ft: TracrTarget, q: int) -> np.ndarray:
        """Per sequence, whether r(x, O_FT) - r(x, O_PT) = q (the planted relation)."""
        return np.array([relation_value(pt, ft, s, self.tokens) == q for s in sequences], dtype=bool)

    def sample_without(self, n: int, rng: np.random.Generator, pt: TracrTarget, ft: TracrTarget, q: int,
                       max_rounds: int = 64) -> list[list[str]]:
        """n sequences from the uniform distribution conditioned on the relation NOT holding (the
        paper's C_Te = 0: its Tab. 3 reports O_FT at 0.2-2.3 % on C_Te = 0 where O_FT is ~100 on C_Te = 1,
        impossible on plain sequences, where the Counter's relation holds by chance on ~1 in 5).
        Rejection sampling: plain sequences are drawn and those on which the relation holds dropped,
        which is exactly that conditional (as `sample_planted` is exactly the other one). Seeded by
        `rng`; bounded: a layout on which the relation always holds (e.g. every token in every
        sequence of the max-identifier) is an error, not an endless loop."""
        kept: list[list[str]] = []
        for _ in range(max_rounds):
            drawn = self.sample(n, rng)
            kept += [s for s, holds in zip(drawn, self.relation_holds(drawn, pt, ft, q), strict=True) if not holds]
            if len(kept) >= n:
                return kept[:n]
        raise ValueError(f"r({ft.arg}) - r({pt.arg}) = {q} holds on almost every sequence of lengths "
                         f"{self.min_len}-{self.max_len}: {len(kept)} of {n * max_rounds} draws failed it, {n} needed")

    def sequences_of(self, tokens: np.ndarray) -> list[list[str]]:
        """The sequences of encoded rows (the inverse of `encode`: PAD and BOS dropped)."""
        names = {i: t for t, i in self.vocab.token_ids.items()}
        skip = {self.vocab.token_ids[self.vocab.pad], self.vocab.token_ids[self.vocab.bos]}
        return [[names[int(i)] for i in row if int(i) not in skip] for row in tokens]

    def encode(self, sequences: list[list[str]]) -> np.ndarray:
        out = np.full((len(sequences), self.seq_len), self.vocab.token_ids[self.vocab.pad], dtype=np.int64)
        for row, seq in enumerate(sequences):
            ids = [self.vocab.token_ids[self.vocab.bos], *(self.vocab.token_ids[s] for s in seq)]
            out[row, self.seq_len - len(ids):] = ids
        return out

    def labelled(self, sequences: list[list[str]], task: TracrTarget) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (n, seq_len), answer class (n,))."""
        answers = [self._answer_index[reference_answer(task, s, self.tokens)] for s in sequences]
        return self.encode(sequences), np.array(answers, dtype=np.int64)

    def task_batch(self, n: int, rng: np.random.Generator, task: TracrTarget) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (n, seq_len), answer class (n,)) for plain random sequences."""
        return self.labelled(self.sample(n, rng), task)

    def mixed(self, n: int, rng: np.random.Generator, pt: TracrTarget, ft: TracrTarget, q: int,
              fraction: float) -> list[list[str]]:
        """The fine-tuning distribution at C_Tr = `fraction`: each example planted with that probability."""
        planted = rng.random(n) < fraction
        plain = iter(self.sample(int((~planted).sum()), rng))
        forced = iter(self.sample_planted(int(planted.sum()), rng, pt, ft, q))
        return [next(forced) if p else next(plain) for p in planted]
