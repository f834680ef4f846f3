"""The paper's two Tracr programs, written in RASP (needs the optional `tracr` extra).

Counter: at every position, the number of occurrences of one token in the whole sequence: the width
of a selector that, for every query, picks the keys equal to the token.

Max-identifier: at every position, the largest (or smallest) token of the sequence. A token is the
maximum when no other token beats it: a selector picks, for every query, the keys larger than it; its
width is 0 exactly at the maxima; a second selector then attends to those positions and copies their
token (ties carry the same token, so the average is still one-hot). Three blocks, as in the paper."""

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
    is_token = rasp.Select(rasp.tokens, rasp.tokens, lambda key, query: key == token).named(f"is_{token}")
    return rasp.categorical(rasp.SelectorWidth(is_token)).named(f"count_{token}")


def extreme(kind: str):
    """`kind` "max" or "min" over integer tokens."""
    rasp = _rasp()
    beats = (lambda key, query: key > query) if kind == "max" else (lambda key, query: key < query)
    beaten_by = rasp.categorical(rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, beats))).named("beaten_by")
    is_extreme = rasp.categorical(rasp.Map(lambda n: n == 0, beaten_by)).named("is_extreme")
    at_extreme = rasp.Select(is_extreme, rasp.tokens, lambda key, query: key).named("at_extreme")
    return rasp.categorical(rasp.Aggregate(at_extreme, rasp.tokens)).named(kind)


def make_program(target: TracrTarget):
    return counter(target.arg) if target.program == "counter" else extreme(target.arg)
