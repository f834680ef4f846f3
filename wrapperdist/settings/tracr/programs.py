"""The paper's two Tracr programs (App. B.1, Algs. 1-2), written in RASP (needs the optional `tracr`
extra). Both compile to 3 blocks of (attention, MLP), as in the paper.

Counter (Alg. 1): block 0's MLP marks the positions holding the token; block 1 counts them (a
SelectorWidth: attention to the marked keys plus BOS, and an MLP that reads the count off BOS's
share); block 2 broadcasts the count to every position (an identity Select and Aggregate).

Max-identifier (Alg. 2): block 0 counts, for every token, how many tokens beat it (a SelectorWidth
of Select(tokens, tokens, key > query): the sorting); block 1's MLP marks the token beaten by exactly
rank - 1 others (the rank-th largest); block 2 attends to it and copies its token (the read-out)."""

from __future__ import annotations

from wrapperdist.settings.tracr.tasks import TracrTarget


def _rasp():
    try:
        from tracr.rasp import rasp
    except ImportError as err:  # the core install has no JAX: say how to get it
        raise ImportError("compiling Tracr programs needs the optional extra: "
                          "pip install 'wrapperdist[tracr]'") from err
    return rasp


def counter(token: str):
    rasp = _rasp()
    is_token = rasp.categorical(rasp.Map(lambda t: t == token, rasp.tokens)).named(f"is_{token}")
    marked = rasp.Select(is_token, rasp.indices, lambda key, query: key).named(f"select_{token}")
    width = rasp.categorical(rasp.SelectorWidth(marked)).named(f"width_{token}")
    identity = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.EQ).named("identity")
    return rasp.categorical(rasp.Aggregate(identity, width)).named(f"count_{token}")


def ranked(rank: int):
    """The `rank`-th largest token, over integer tokens (larger int = larger token)."""
    rasp = _rasp()
    beats = rasp.Select(rasp.tokens, rasp.tokens, lambda key, query: key > query).named("beats")
    beaten_by = rasp.categorical(rasp.SelectorWidth(beats)).named("beaten_by")
    is_ranked = rasp.categorical(rasp.Map(lambda n: n == rank - 1, beaten_by)).named(f"is_rank_{rank}")
    at_ranked = rasp.Select(is_ranked, rasp.tokens, lambda key, query: key).named("at_ranked")
    return rasp.categorical(rasp.Aggregate(at_ranked, rasp.tokens)).named(f"rank_{rank}")


def make_program(target: TracrTarget):
    return counter(target.arg) if target.program == "counter" else ranked(target.rank)
