"""Token vocabulary, the five PCFG task families, and their labels.

A task example is  PAD* BOS <task> <operand> s_1 … s_n ANS  →  answer,  right-aligned so the
answer is always predicted at the last position (which keeps probing and evaluation simple: one
fixed read-out position). Labels are computed for a whole batch at once with array operations.

Task definitions (paper: Jain et al. 2023, Sec. 4 / App. B; exact definitions not public, these
follow the paper's names):
  counter               number of occurrences of the operand token
  count_composition     number of (overlapping) occurrences of the bigram operand·operand
  index_of_occurrence   position of the k-th occurrence of the operand, NONE if fewer than k
  index_of_composition  start position of the k-th occurrence of the bigram operand·operand
  token_at_index        the token at position <operand>, the operand being a number token
"""

from __future__ import annotations

import numpy as np

from wrapperdist.settings.pcfg.grammar import EMPTY
from wrapperdist.settings.pcfg.names import TERMINALS, Family

NO_ANSWER = -1  # integer label meaning "does not occur"; encoded as the NONE token


class Vocab:
    """Fixed layout: 4 specials, the terminals, one token per task family, then numbers 0..max_number."""

    PAD, BOS, ANS, NONE = 0, 1, 2, 3
    SPECIALS = ("<pad>", "<bos>", "<ans>", "<none>")

    def __init__(self, max_number: int):
        self.max_number = max_number
        self.terminal_offset = len(self.SPECIALS)
        self.family_offset = self.terminal_offset + len(TERMINALS)
        self.families = tuple(Family)
        self.number_offset = self.family_offset + len(self.families)
        self.size = self.number_offset + max_number + 1

    def terminal(self, terminal_ids: np.ndarray | int) -> np.ndarray | int:
        return terminal_ids + self.terminal_offset

    def family(self, family: Family) -> int:
        return self.family_offset + self.families.index(family)

    def number(self, values: np.ndarray) -> np.ndarray:
        """Integer answers → tokens; NO_ANSWER → NONE."""
        return np.where(values == NO_ANSWER, self.NONE, values + self.number_offset)

    def decode(self, token: int) -> str:
        if token < self.terminal_offset:
            return self.SPECIALS[token]
        if token < self.family_offset:
            return TERMINALS[token - self.terminal_offset]
        if token < self.number_offset:
            return f"<{self.families[token - self.family_offset]}>"
        return str(token - self.number_offset)


def terminal_index(name: str) -> int:
    return TERMINALS.index(name)


def _kth_position(hits: np.ndarray, k: int) -> np.ndarray:
    """Position of the k-th True in each row (1-based k), NO_ANSWER if fewer than k."""
    running = np.cumsum(hits, axis=1)
    found = (running == k) & hits
    return np.where(found.any(1), found.argmax(1), NO_ANSWER)


def labels(family: Family, strings: np.ndarray, operands: np.ndarray, k: int) -> np.ndarray:
    """Integer answers for a batch. `strings` (n, L) terminal ids padded with EMPTY; `operands` (n,)
    terminal ids, or positions for token_at_index. Returns (n,) ints (terminal ids for
    token_at_index, counts/positions otherwise, NO_ANSWER where absent)."""
    op = operands[:, None]
    hits = strings == op
    bigram = np.zeros_like(hits)
    bigram[:, :-1] = hits[:, :-1] & hits[:, 1:]
    if family is Family.counter:
        return hits.sum(1)
    if family is Family.count_composition:
        return bigram.sum(1)
    if family is Family.index_of_occurrence:
        return _kth_position(hits, k)
    if family is Family.index_of_composition:
        return _kth_position(bigram, k)
    if family is Family.token_at_index:
        return np.take_along_axis(strings, op, axis=1)[:, 0]
    raise ValueError(f"unknown task family {family!r}")


def encode(
    vocab: Vocab,
    families: np.ndarray,
    operands: np.ndarray,
    strings: np.ndarray,
    lengths: np.ndarray,
    answers: np.ndarray,
    max_len: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Build right-aligned token rows and answer tokens. `families` holds indices into Family,
    `answers` the integer labels of each row's own family."""
    n = len(strings)
    seq_len = max_len + 4
    tokens = np.full((n, seq_len), Vocab.PAD, dtype=np.int64)
    tokens[:, -1] = Vocab.ANS
    # String tokens end just before ANS: column of string position j is seq_len-1-len+j.
    cols = np.arange(strings.shape[1])[None, :] + (seq_len - 1 - lengths)[:, None]
    valid = strings != EMPTY
    rows = np.broadcast_to(np.arange(n)[:, None], strings.shape)
    tokens[rows[valid], cols[valid]] = vocab.terminal(strings[valid])
    start = seq_len - 1 - lengths
    family_list = vocab.families
    is_index_operand = families == family_list.index(Family.token_at_index)
    operand_tokens = np.where(
        is_index_operand, vocab.number(operands), vocab.terminal(np.maximum(operands, 0))
    )
    tokens[np.arange(n), start - 1] = operand_tokens
    tokens[np.arange(n), start - 2] = vocab.family_offset + families
    tokens[np.arange(n), start - 3] = Vocab.BOS
    answer_tokens = np.where(is_index_operand, vocab.terminal(np.maximum(answers, 0)), vocab.number(answers))
    return tokens, answer_tokens
