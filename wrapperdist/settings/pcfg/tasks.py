"""The PCFG examples as the paper lays them out (App. B.2, Eq. 1), and the five task families' labels.

An example is  SOS T O O' SOT text EOT ART → Ans  (EOS follows Ans in the paper; it is never
predicted from anything the model does not already know, so it is left out). T is the task family,
O its operand (a terminal; a composition such as `aa`; NULL for token-at-index), O' the second
operand: the counting window N (paper: 40) or the occurrence number k (paper: 6). The answer is
predicted at the ART position, which is always the last input position: every row has the same
length (the text is a fixed window of W tokens), so no padding is needed.

Task definitions (App. B.2; "not stated" details chosen here are marked *):
  counter               occurrences of O within the last N text positions
  count_composition     occurrences of the bigram O·O within the last N positions (* overlapping;
                        * compositions are the three same-token pairs aa, bb, cc)
  index_of_occurrence   position of the k-th occurrence of O counted backward from EOT (1 = the last
                        text token; * backward, which fits Fig. 16's 0-40 label axis), NONE if fewer
  index_of_composition  the same for the bigram O·O (* position of the bigram's later element)
  token_at_index        the token N positions before EOT (O = NULL, O' = N)
"""

from __future__ import annotations

import numpy as np

from wrapperdist.settings.pcfg.names import TERMINALS, Family

NO_ANSWER = -1  # integer label meaning "does not occur"; encoded as the NONE token
COMPOSITIONS = tuple(t + t for t in TERMINALS)  # the composition operands: aa, bb, cc


class Vocab:
    """Specials, the terminals, one token per task family, the compositions, then numbers
    0..max_number (counts, positions and the O' values)."""

    SPECIALS = ("<pad>", "<sos>", "<sot>", "<eot>", "<art>", "<none>", "<null>")
    PAD, SOS, SOT, EOT, ART, NONE, NULL = range(len(SPECIALS))

    def __init__(self, max_number: int):
        self.max_number = max_number
        self.terminal_offset = len(self.SPECIALS)
        self.family_offset = self.terminal_offset + len(TERMINALS)
        self.families = tuple(Family)
        self.composition_offset = self.family_offset + len(self.families)
        self.number_offset = self.composition_offset + len(COMPOSITIONS)
        self.size = self.number_offset + max_number + 1

    def terminal(self, terminal_ids: np.ndarray | int) -> np.ndarray | int:
        return terminal_ids + self.terminal_offset

    def family(self, family: Family) -> int:
        return self.family_offset + self.families.index(family)

    def number(self, values: np.ndarray | int) -> np.ndarray:
        """Integer answers → tokens; NO_ANSWER → NONE."""
        values = np.asarray(values)
        return np.where(values == NO_ANSWER, self.NONE, values + self.number_offset)

    def decode(self, token: int) -> str:
        if token < self.terminal_offset:
            return self.SPECIALS[token]
        if token < self.family_offset:
            return TERMINALS[token - self.terminal_offset]
        if token < self.composition_offset:
            return f"<{self.families[token - self.family_offset]}>"
        if token < self.number_offset:
            return COMPOSITIONS[token - self.composition_offset]
        return str(token - self.number_offset)


def terminal_index(name: str) -> int:
    return TERMINALS.index(name)


def _kth_from_end(hits: np.ndarray, k: int) -> np.ndarray:
    """Per row, the distance from the end (1 = last column) of the k-th True scanning backward;
    NO_ANSWER if fewer than k."""
    backward = hits[:, ::-1]
    running = np.cumsum(backward, axis=1)
    found = (running == k) & backward
    return np.where(found.any(1), found.argmax(1) + 1, NO_ANSWER)


def labels(family: Family, texts: np.ndarray, operands: np.ndarray, count_window: int, k: int) -> np.ndarray:
    """Integer answers for a batch of texts (n, W) of terminal ids; `operands` (n,) terminal ids (the
    composition's token for the composition tasks; ignored for token_at_index). Terminal ids for
    token_at_index, counts / positions otherwise, NO_ANSWER where absent."""
    hits = texts == operands[:, None]
    bigram = np.zeros_like(hits)
    bigram[:, 1:] = hits[:, 1:] & hits[:, :-1]  # marks the bigram's later element
    last = slice(texts.shape[1] - count_window, None)
    if family is Family.counter:
        return hits[:, last].sum(1)
    if family is Family.count_composition:
        inside = bigram[:, last].copy()
        inside[:, 0] = False  # a bigram counts only if both elements lie in the window
        return inside.sum(1)
    if family is Family.index_of_occurrence:
        return _kth_from_end(hits, k)
    if family is Family.index_of_composition:
        return _kth_from_end(bigram, k)
    if family is Family.token_at_index:
        return texts[:, texts.shape[1] - count_window]
    raise ValueError(f"unknown task family {family!r}")


def second_operand(family: Family, count_window: int, k: int) -> int:
    """O': the counting window for the counting-type tasks and token-at-index, k for the index tasks."""
    return k if family in (Family.index_of_occurrence, Family.index_of_composition) else count_window


def encode(vocab: Vocab, families: np.ndarray, operands: np.ndarray, texts: np.ndarray, answers: np.ndarray,
           count_window: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows `SOS T O O' SOT text EOT ART` and answer tokens. `families` indexes Family."""
    n, width = texts.shape
    tokens = np.empty((n, width + 7), dtype=np.int64)
    family_list = vocab.families
    is_token_at_index = families == family_list.index(Family.token_at_index)
    is_composition = np.isin(families, [family_list.index(Family.count_composition),
                                        family_list.index(Family.index_of_composition)])
    operand_tokens = np.where(is_composition, vocab.composition_offset + operands, vocab.terminal(operands))
    operand_tokens = np.where(is_token_at_index, Vocab.NULL, operand_tokens)
    second = np.array([second_operand(f, count_window, k) for f in family_list])[families]
    tokens[:, 0] = Vocab.SOS
    tokens[:, 1] = vocab.family_offset + families
    tokens[:, 2] = operand_tokens
    tokens[:, 3] = vocab.number(second)
    tokens[:, 4] = Vocab.SOT
    tokens[:, 5 : 5 + width] = vocab.terminal(texts)
    tokens[:, -2] = Vocab.EOT
    tokens[:, -1] = Vocab.ART
    answer_tokens = np.where(is_token_at_index, vocab.terminal(np.maximum(answers, 0)), vocab.number(answers))
    return tokens, answer_tokens
