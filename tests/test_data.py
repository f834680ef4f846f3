"""PCFG strings are grammatical, labels match brute force, priors and spurious shares hold."""

import functools

import numpy as np
import pytest

from wrapperdist.settings.pcfg.grammar import EMPTY, Grammar, make_grammar, sample_strings
from wrapperdist.settings.pcfg.names import TERMINALS, Family
from wrapperdist.settings.pcfg.sampler import PCFGTasks, TaskSpec
from wrapperdist.settings.pcfg.tasks import NO_ANSWER, Vocab, labels


def derives(grammar: Grammar, string: tuple[int, ...]) -> bool:
    """Whether the grammar derives `string` (terminal ids): a memoised top-down parser, independent
    of the sampler, so the tests can check generated strings against the rules themselves."""

    n_term = len(TERMINALS)

    @functools.cache
    def can(symbol: int, i: int, j: int) -> bool:
        if symbol < n_term:
            return j - i == 1 and string[i] == symbol
        return any(split(body, i, j) for body, p in grammar.rules(symbol) if p > 0)

    @functools.cache
    def split(body: tuple[int, ...], i: int, j: int) -> bool:
        if not body:
            return i == j
        head, rest = body[0], body[1:]
        # every symbol derives at least one terminal, so leave room for the rest
        return any(can(head, i, k) and split(rest, k, j) for k in range(i + 1, j - len(rest) + 1))

    return can(grammar.start, 0, len(string))


@pytest.fixture(scope="module")
def grammar():
    return make_grammar(seed=0, n_levels=4, symbols_per_level=4, rules_per_symbol=3, rhs_len=(1, 3),
                        terminal_rhs_len=(1, 2))


@pytest.fixture(scope="module")
def tasks(grammar):
    return PCFGTasks(grammar, min_len=6, max_len=20, index_k=3)


def test_generated_strings_are_derivable(grammar):
    strings, lengths = sample_strings(grammar, 200, np.random.default_rng(1))
    for row, n in zip(strings, lengths, strict=True):
        sentence = tuple(int(x) for x in row[:n])
        assert EMPTY not in sentence and derives(grammar, sentence)


def test_parser_rejects_non_sentences(grammar):
    """The check above is only meaningful if the parser can say no."""
    rng = np.random.default_rng(2)
    strings, lengths = sample_strings(grammar, 300, rng)
    rejected = 0
    for row, n in zip(strings, lengths, strict=True):
        shuffled = tuple(int(x) for x in rng.permutation(row[:n])) + (int(rng.integers(3)),) * 3
        rejected += not derives(grammar, shuffled)
    assert rejected > 30


def test_rules_are_probability_distributions(grammar):
    for level in grammar.levels:
        for symbol in level:
            assert sum(p for _, p in grammar.rules(symbol)) == pytest.approx(1.0)


def _brute_force(family, row, operand, k):
    s = [int(x) for x in row if x != EMPTY]
    if family is Family.counter:
        return s.count(operand)
    if family is Family.count_composition:
        return sum(s[i] == s[i + 1] == operand for i in range(len(s) - 1))
    if family is Family.index_of_occurrence:
        hits = [i for i, x in enumerate(s) if x == operand]
        return hits[k - 1] if len(hits) >= k else NO_ANSWER
    if family is Family.index_of_composition:
        hits = [i for i in range(len(s) - 1) if s[i] == s[i + 1] == operand]
        return hits[k - 1] if len(hits) >= k else NO_ANSWER
    return s[operand]


@pytest.mark.parametrize("family", list(Family))
def test_labels_match_brute_force(tasks, family):
    rng = np.random.default_rng(3)
    strings, lengths = tasks.strings(500, rng)
    if family is Family.token_at_index:
        operands = (rng.random(500) * lengths).astype(np.int64)
    else:
        operands = rng.integers(0, 3, size=500)
    got = labels(family, strings, operands, k=3)
    expected = [_brute_force(family, r, int(o), 3) for r, o in zip(strings, operands, strict=True)]
    assert got.tolist() == expected
    if family in (Family.index_of_occurrence, Family.index_of_composition):
        assert (got == NO_ANSWER).any() and (got != NO_ANSWER).any()  # both branches exercised


def test_encoding_round_trips(tasks):
    """Decode encoded rows back into (family, operand, string, answer) and recompute the label."""
    rng = np.random.default_rng(4)
    tokens, answers = tasks.mixture_batch(300, rng, {f: 1.0 for f in Family}, np.array([0.5, 0.3, 0.2]))
    v = tasks.vocab
    assert tokens.shape == (300, tasks.seq_len) and (tokens[:, -1] == Vocab.ANS).all()
    for row, ans in zip(tokens, answers, strict=True):
        bos = int(np.flatnonzero(row == Vocab.BOS)[0])
        assert (row[:bos] == Vocab.PAD).all()
        family = v.families[row[bos + 1] - v.family_offset]
        body = [int(t) - v.terminal_offset for t in row[bos + 3 : -1]]
        op_token = int(row[bos + 2])
        operand = op_token - v.number_offset if family is Family.token_at_index else op_token - v.terminal_offset
        expected = _brute_force(family, body, operand, tasks.index_k)
        if family is Family.token_at_index:
            assert ans == v.terminal(expected)
        else:
            assert ans == (Vocab.NONE if expected == NO_ANSWER else expected + v.number_offset)


def test_lengths_in_range(tasks):
    _, lengths = tasks.strings(2000, np.random.default_rng(5))
    assert lengths.min() >= 6 and lengths.max() <= 20


@pytest.mark.parametrize("prior", [(0.999, 0.001, 0.0), (0.9, 0.1, 0.0), (0.5, 0.3, 0.2)])
def test_sampling_prior_frequency(tasks, prior):
    n = 40_000
    tokens, _ = tasks.mixture_batch(n, np.random.default_rng(6), {Family.counter: 1.0}, np.array(prior))
    operand = tokens[np.arange(n), np.argmax(tokens == Vocab.BOS, axis=1) + 2] - tasks.vocab.terminal_offset
    freq = np.bincount(operand, minlength=3) / n
    for got, want in zip(freq, prior, strict=True):
        assert abs(got - want) <= 4 * np.sqrt(want * (1 - want) / n) + 1e-9


def test_family_weights(tasks):
    n = 20_000
    weights = {Family.counter: 3.0, Family.index_of_occurrence: 1.0}
    tokens, _ = tasks.mixture_batch(n, np.random.default_rng(7), weights, np.array([1 / 3] * 3))
    fam = tokens[np.arange(n), np.argmax(tokens == Vocab.BOS, axis=1) + 1]
    share = (fam == tasks.vocab.family(Family.counter)).mean()
    assert abs(share - 0.75) < 0.02


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.8, 1.0])
def test_spurious_fraction(tasks, fraction):
    """The planted relation count(b) = count(a) + 1 holds on the requested share (plus chance)."""
    n = 4000
    rng = np.random.default_rng(8)
    ft, pt = TaskSpec(Family.counter, "b"), TaskSpec(Family.counter, "a")
    tokens, answers = tasks.task_batch(n, rng, ft, fraction, pt, offset=1)
    v = tasks.vocab
    count_a = (tokens == v.terminal(0)).sum(1)  # the operand token is b, so every a is in the string
    count_b = (tokens == v.terminal(1)).sum(1) - 1  # minus the operand token itself
    assert ((answers - v.number_offset) == count_b).all()
    holds = (count_b == count_a + 1).mean()
    chance = tasks.task_batch(n, rng, ft)  # same task, no planting
    base = ((chance[0] == v.terminal(1)).sum(1) - 1 == (chance[0] == v.terminal(0)).sum(1) + 1).mean()
    expected = fraction + (1 - fraction) * base
    assert abs(holds - expected) < 0.035, (holds, expected)


def test_determinism_under_seed(tasks):
    weights = {f: 1.0 for f in Family}
    prior = np.array([0.9, 0.1, 0.0])
    a = tasks.mixture_batch(64, np.random.default_rng(9), weights, prior)
    b = tasks.mixture_batch(64, np.random.default_rng(9), weights, prior)
    c = tasks.mixture_batch(64, np.random.default_rng(10), weights, prior)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not (a[0] == c[0]).all()
    g1 = make_grammar(1, 4, 4, 3, (1, 3), (1, 2))
    g2 = make_grammar(1, 4, 4, 3, (1, 3), (1, 2))
    assert (g1.rhs == g2.rhs).all() and (g1.cum_prob == g2.cum_prob).all()

