"""PCFG strings are grammatical, labels match brute force, priors and spurious shares hold."""

import functools

import numpy as np
import pytest

from wrapperdist.settings.pcfg.grammar import EMPTY, Grammar, make_grammar, paper_grammar, sample_strings
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
def tasks():
    """The paper's grammar and layout at a small window (W = 48, N = 24, k = 6)."""
    return PCFGTasks(paper_grammar(), window=48, count_window=24, index_k=6)


# Fig. 14 of the paper, typed out again here (not read from the package): symbol -> its two rules.
FIG_14 = {
    "s": {"r q", "q p"}, "p": {"m n o", "n o m"}, "q": {"n m o", "m n"}, "r": {"o m", "m o n"},
    "m": {"l j", "j l k"}, "n": {"k j l", "l j k"}, "o": {"l k j", "k j"},
    "j": {"h i", "i h"}, "k": {"h g i", "g h i"}, "l": {"i h g", "h i g"},
    "g": {"d f e", "f e d"}, "h": {"e d f", "d e f"}, "i": {"e f d", "f d e"},
    "d": {"c a", "a b c"}, "e": {"c b", "c a b"}, "f": {"c b a", "b a"},
}


def test_sampled_strings_are_derivable(grammar):
    """The sampler against an independent parser (a short random grammar: parsing the paper's
    ≈ 276-token derivations in Python would take minutes)."""
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


def test_the_grammar_is_figure_14():
    g = paper_grammar()
    names = g.names
    got = {names[s]: {" ".join(names[c] for c in body) for body, _ in g.rules(s)} for level in g.levels for s in level}
    assert got == FIG_14  # 16 non-terminals, every rule
    assert all(p == 0.5 for level in g.levels for s in level for _, p in g.rules(s))
    assert [len(level) for level in g.levels] == [1, 3, 3, 3, 3, 3]
    lengths = sample_strings(g, 4000, np.random.default_rng(0))[1]
    assert 265 < lengths.mean() < 285 and 0.15 < (lengths < 250).mean() < 0.32  # paper: ≈ 276, a quarter < 250


def test_windows_are_random_pieces_of_w_tokens(tasks):
    texts = tasks.texts(300, np.random.default_rng(11))
    assert texts.shape == (300, 48) and texts.min() >= 0 and texts.max() <= 2
    assert len({tuple(row[:6]) for row in texts}) > 100  # random windows, not always a derivation's beginning


def _brute_force(family, text, operand, n_last, k):
    s = [int(x) for x in text]
    last = s[len(s) - n_last:]
    if family is Family.counter:
        return last.count(operand)
    if family is Family.count_composition:
        return sum(last[i] == last[i + 1] == operand for i in range(len(last) - 1))
    backward = s[::-1]
    if family is Family.index_of_occurrence:
        hits = [i + 1 for i, x in enumerate(backward) if x == operand]
        return hits[k - 1] if len(hits) >= k else NO_ANSWER
    if family is Family.index_of_composition:  # the later element of each bigram, counted from the end
        hits = [i + 1 for i in range(len(backward) - 1) if backward[i] == backward[i + 1] == operand]
        return hits[k - 1] if len(hits) >= k else NO_ANSWER
    return s[len(s) - n_last]  # token_at_index: N positions before the end


@pytest.mark.parametrize("family", list(Family))
def test_labels_match_brute_force(family):
    """At the paper's scale (W = 250, N = 40, k = 6), where the 6th `aa` exists in some windows."""
    paper_scale = PCFGTasks(paper_grammar(), window=250, count_window=40, index_k=6)
    rng = np.random.default_rng(3)
    texts = paper_scale.texts(400, rng)
    operands = rng.integers(0, 3, size=400)
    got = labels(family, texts, operands, count_window=40, k=6)
    expected = [_brute_force(family, r, int(o), 40, 6) for r, o in zip(texts, operands, strict=True)]
    assert got.tolist() == expected
    if family is Family.index_of_composition:
        assert (got == NO_ANSWER).any() and (got != NO_ANSWER).any()  # both branches exercised


def test_layout_is_equation_1(tasks):
    """SOS, T, O, O', SOT, the W text tokens, EOT, ART -> Ans; O' = N for counting, k for the index tasks."""
    rng = np.random.default_rng(4)
    tokens, answers = tasks.mixture_batch(300, rng, {f: 1.0 for f in Family}, np.array([0.5, 0.3, 0.2]))
    v = tasks.vocab
    assert tokens.shape == (300, 48 + 7) and tasks.seq_len == 55
    assert (tokens[:, 0] == Vocab.SOS).all() and (tokens[:, 4] == Vocab.SOT).all()
    assert (tokens[:, -2] == Vocab.EOT).all() and (tokens[:, -1] == Vocab.ART).all()
    seen = set()
    for row, ans in zip(tokens, answers, strict=True):
        family = v.families[row[1] - v.family_offset]
        seen.add(family)
        text = [int(t) - v.terminal_offset for t in row[5:-2]]
        assert all(0 <= t <= 2 for t in text)
        index_task = family in (Family.index_of_occurrence, Family.index_of_composition)
        assert v.decode(int(row[3])) == ("6" if index_task else "24")
        if family is Family.token_at_index:
            assert row[2] == Vocab.NULL and ans == v.terminal(_brute_force(family, text, 0, 24, 6))
            continue
        composition = family in (Family.count_composition, Family.index_of_composition)
        op_text = v.decode(int(row[2]))
        assert op_text in (("aa", "bb", "cc") if composition else ("a", "b", "c"))
        expected = _brute_force(family, text, TERMINALS.index(op_text[0]), 24, 6)
        assert ans == (Vocab.NONE if expected == NO_ANSWER else expected + v.number_offset)
    assert seen == set(Family)


@pytest.mark.parametrize("prior", [(0.999, 0.001, 0.0), (0.9, 0.1, 0.0), (0.5, 0.3, 0.2)])
def test_sampling_prior_frequency(tasks, prior):
    n = 20_000
    tokens, _ = tasks.mixture_batch(n, np.random.default_rng(6), {Family.counter: 1.0}, np.array(prior))
    freq = np.bincount(tokens[:, 2] - tasks.vocab.terminal_offset, minlength=3) / n
    for got, want in zip(freq, prior, strict=True):
        assert abs(got - want) <= 4 * np.sqrt(want * (1 - want) / n) + 1e-9


def test_family_draw_is_uniform_by_default(tasks):
    n = 10_000
    tokens, _ = tasks.mixture_batch(n, np.random.default_rng(7), {f: 1.0 for f in Family}, np.array([1 / 3] * 3))
    shares = np.bincount(tokens[:, 1] - tasks.vocab.family_offset, minlength=5) / n
    assert np.abs(shares - 0.2).max() < 0.02


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_spurious_fraction(tasks, fraction):
    """count(b) = count(a) + 1 within the last N positions on the requested share (plus chance), on
    every example at C_Tr = 1; the label is always the true count of b."""
    n = 3000
    rng = np.random.default_rng(8)
    ft, pt = TaskSpec(Family.counter, "b"), TaskSpec(Family.counter, "a")
    tokens, answers = tasks.task_batch(n, rng, ft, fraction, pt, offset=1)
    v = tasks.vocab
    last = tokens[:, 5:-2][:, -24:]
    count_a, count_b = (last == v.terminal(0)).sum(1), (last == v.terminal(1)).sum(1)
    assert ((answers - v.number_offset) == count_b).all()
    holds = (count_b == count_a + 1).mean()
    chance = tasks.task_batch(n, rng, ft)[0][:, 5:-2][:, -24:]
    base = ((chance == v.terminal(1)).sum(1) == (chance == v.terminal(0)).sum(1) + 1).mean()
    expected = fraction + (1 - fraction) * base
    assert abs(holds - expected) < 0.035, (holds, expected)
    if fraction == 1.0:
        assert holds == 1.0


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


def test_short_random_grammars_are_windowed_by_appending_derivations():
    grammar = make_grammar(0, 4, 4, 3, (1, 3), (1, 2))
    texts = PCFGTasks(grammar, window=40, count_window=10, index_k=2).texts(50, np.random.default_rng(13))
    assert texts.shape == (50, 40) and (texts != EMPTY).all()
