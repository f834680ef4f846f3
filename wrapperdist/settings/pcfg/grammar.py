"""Leveled probabilistic context-free grammars over the terminals a, b, c — the paper's (Fig. 14),
or one drawn from a seed — and a vectorised sampler.

The grammar is *leveled*: the start symbol sits on level 0, every rule of a level-k non-terminal
rewrites it into symbols of level k+1, and the last non-terminal level rewrites into terminals.
Because every derivation has the same depth, a whole batch can be expanded one level at a time
with array operations (no per-string recursion), which keeps data generation far faster than the
training step that consumes it. The paper's grammar is written below as data; a random one is drawn
from a seed, so "the grammar" of an experiment is fully named by its config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wrapperdist.settings.pcfg.names import TERMINALS

EMPTY = -1  # padding inside the symbol arrays


@dataclass(frozen=True)
class Grammar:
    """Rules indexed by symbol id. Ids 0..len(TERMINALS)-1 are terminals, the rest non-terminals.

    `rhs[s, r]` is the right-hand side of rule r of symbol s (padded with EMPTY), `cum_prob[s, r]`
    the cumulative rule probabilities (padded with 1.0 so padded rules are never chosen).
    """

    levels: tuple[tuple[int, ...], ...]  # non-terminal ids per level; levels[0] == (start,)
    rhs: np.ndarray  # (n_symbols, max_rules, max_rhs) int
    cum_prob: np.ndarray  # (n_symbols, max_rules) float
    n_rules: np.ndarray  # (n_symbols,) int
    names: tuple[str, ...] = ()  # symbol names, where the grammar was written by hand

    @property
    def start(self) -> int:
        return self.levels[0][0]

    @property
    def n_symbols(self) -> int:
        return self.rhs.shape[0]

    def rules(self, symbol: int) -> list[tuple[tuple[int, ...], float]]:
        """The rules of one symbol as (rhs, probability) pairs, for inspection and parsing."""
        out = []
        prev = 0.0
        for r in range(int(self.n_rules[symbol])):
            body = tuple(int(x) for x in self.rhs[symbol, r] if x != EMPTY)
            out.append((body, float(self.cum_prob[symbol, r] - prev)))
            prev = float(self.cum_prob[symbol, r])
        return out


def make_grammar(
    seed: int,
    n_levels: int,
    symbols_per_level: int,
    rules_per_symbol: int,
    rhs_len: tuple[int, int],
    terminal_rhs_len: tuple[int, int],
) -> Grammar:
    """Draw a leveled grammar. Level 0 holds the single start symbol; levels 1..n_levels-1 hold
    `symbols_per_level` non-terminals each; the last level's symbols rewrite into 1..k terminals."""
    rng = np.random.default_rng(seed)
    n_term = len(TERMINALS)
    levels: list[tuple[int, ...]] = [(n_term,)]
    next_id = n_term + 1
    for _ in range(1, n_levels):
        levels.append(tuple(range(next_id, next_id + symbols_per_level)))
        next_id += symbols_per_level
    n_symbols = next_id
    max_rhs = max(rhs_len[1], terminal_rhs_len[1])
    rhs = np.full((n_symbols, rules_per_symbol, max_rhs), EMPTY, dtype=np.int64)
    cum_prob = np.ones((n_symbols, rules_per_symbol))
    n_rules = np.zeros(n_symbols, dtype=np.int64)
    for depth, symbols in enumerate(levels):
        last = depth == len(levels) - 1
        children = tuple(range(n_term)) if last else levels[depth + 1]
        lo, hi = terminal_rhs_len if last else rhs_len
        for s in symbols:
            bodies: set[tuple[int, ...]] = set()
            # Distinct bodies, so each rule is a real alternative; bounded tries keep tiny settings finite.
            for _ in range(100 * rules_per_symbol):
                if len(bodies) == rules_per_symbol:
                    break
                length = int(rng.integers(lo, hi + 1))
                bodies.add(tuple(int(c) for c in rng.choice(children, size=length)))
            for r, body in enumerate(sorted(bodies)):
                rhs[s, r, : len(body)] = body
            n_rules[s] = len(bodies)
            probs = rng.dirichlet(np.full(len(bodies), 2.0))
            cum_prob[s, : len(bodies)] = np.cumsum(probs)
            cum_prob[s, len(bodies) - 1 :] = 1.0
    # Terminal ids rewrite into themselves so the expansion step can treat every column alike.
    for t in range(n_term):
        rhs[t, 0, 0] = t
        n_rules[t] = 1
    return Grammar(levels=tuple(levels), rhs=rhs, cum_prob=cum_prob, n_rules=n_rules)


def compact(rows: np.ndarray) -> np.ndarray:
    """Move EMPTY entries to the right of each row, keeping the others' order (a stable sort on the
    padding flag)."""
    order = np.argsort(rows == EMPTY, axis=1, kind="stable")
    return np.take_along_axis(rows, order, axis=1)


def sample_strings(grammar: Grammar, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sample `n` sentences. Returns (strings, lengths): strings is (n, max_len) of terminal ids,
    left-aligned and padded with EMPTY."""
    symbols = np.full((n, 1), grammar.start, dtype=np.int64)
    for _ in range(len(grammar.levels)):
        live = symbols != EMPTY
        safe = np.where(live, symbols, 0)
        u = rng.random(symbols.shape)
        rule = (u[..., None] >= grammar.cum_prob[safe]).sum(-1)
        rule = np.minimum(rule, grammar.n_rules[safe] - 1)
        expanded = grammar.rhs[safe, rule]  # (n, width, max_rhs)
        expanded[~live] = EMPTY
        expanded = expanded.reshape(n, -1)
        expanded = compact(expanded)
        width = int((expanded != EMPTY).sum(1).max())
        symbols = expanded[:, :width]
    lengths = (symbols != EMPTY).sum(1)
    return symbols, lengths


# The paper's grammar (Jain et al. 2023, App. B.2, Fig. 14; after Allen-Zhu & Li 2023): 16
# non-terminals in 6 levels below the terminals a, b, c, two rules each, each chosen with probability
# 0.5. Written as data: level by level, symbol -> its two right-hand sides.
PAPER_RULES: tuple[dict[str, tuple[str, str]], ...] = (
    {"s": ("r q", "q p")},
    {"p": ("m n o", "n o m"), "q": ("n m o", "m n"), "r": ("o m", "m o n")},
    {"m": ("l j", "j l k"), "n": ("k j l", "l j k"), "o": ("l k j", "k j")},
    {"j": ("h i", "i h"), "k": ("h g i", "g h i"), "l": ("i h g", "h i g")},
    {"g": ("d f e", "f e d"), "h": ("e d f", "d e f"), "i": ("e f d", "f d e")},
    {"d": ("c a", "a b c"), "e": ("c b", "c a b"), "f": ("c b a", "b a")},
)


def grammar_from_rules(rules: tuple[dict[str, tuple[str, ...]], ...]) -> Grammar:
    """A leveled grammar from named rules (uniform choice among each symbol's rules). Every rule of a
    level's symbol must rewrite into symbols of the next level (terminals after the last)."""
    names = [*TERMINALS, *(symbol for level in rules for symbol in level)]
    ids = {name: i for i, name in enumerate(names)}
    n_rules_max = max(len(bodies) for level in rules for bodies in level.values())
    max_rhs = max(len(body.split()) for level in rules for bodies in level.values() for body in bodies)
    rhs = np.full((len(names), n_rules_max, max_rhs), EMPTY, dtype=np.int64)
    cum_prob = np.ones((len(names), n_rules_max))
    n_rules = np.zeros(len(names), dtype=np.int64)
    for depth, level in enumerate(rules):
        allowed = set(rules[depth + 1]) if depth + 1 < len(rules) else set(TERMINALS)
        for symbol, bodies in level.items():
            for r, body in enumerate(bodies):
                children = body.split()
                if not set(children) <= allowed:
                    raise ValueError(f"rule {symbol} -> {body} leaves the next level ({sorted(allowed)})")
                rhs[ids[symbol], r, : len(children)] = [ids[c] for c in children]
            n_rules[ids[symbol]] = len(bodies)
            cum_prob[ids[symbol], : len(bodies)] = np.arange(1, len(bodies) + 1) / len(bodies)
    for t in range(len(TERMINALS)):  # terminals rewrite into themselves (see make_grammar)
        rhs[t, 0, 0] = t
        n_rules[t] = 1
    levels = tuple(tuple(ids[s] for s in level) for level in rules)
    return Grammar(levels=levels, rhs=rhs, cum_prob=cum_prob, n_rules=n_rules, names=tuple(names))


def paper_grammar() -> Grammar:
    return grammar_from_rules(PAPER_RULES)
