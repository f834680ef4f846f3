"""An offline stand-in for TinyStories-Instruct: short procedural stories whose features are chosen
first and then written in, so every label is ground truth. The project's own text; no download.

Each feature has its own sentences, and each of those carries a marker phrase that `detect_features`
looks for, so the same detector labels the generator's stories exactly (tested) and scores a model's
generations ("did it write a twist?") by the same rule — the stand-in for the paper's GPT-3.5
twist classifier (App. F.2)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from wrapperdist.settings.stories.records import FEATURES, StoryRecord

NAMES = ("Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam", "Lucy", "Tim", "Zoe", "Jack")
KINDS = ("girl", "boy", "cat", "dog", "bird", "bunny", "bear", "frog")
ADJECTIVES = ("little", "happy", "curious", "kind", "brave", "shy", "silly", "small")
PLACES = ("park", "garden", "forest", "beach", "house", "farm", "lake", "town")
OBJECTS = ("ball", "kite", "box", "cake", "hat", "boat", "book", "toy car", "drum", "blanket")
COLOURS = ("red", "blue", "green", "yellow", "shiny", "big", "soft", "old")
VERBS = ("play", "run", "dance", "sing", "jump", "read", "paint", "swim")
SURPRISES = ("a magic key", "a sleeping puppy", "a secret map", "a tiny dragon", "a birthday present",
             "a lost star", "a singing shell", "a golden egg")
MORALS = ("sharing makes everyone happy", "it is good to be kind", "friends help each other",
          "telling the truth is important", "being patient pays off")

# Marker phrases: one per feature, present in every sentence that expresses it.
MARKERS = {
    "Twist": r"\bsomething unexpected\b",
    "Foreshadowing": r"\bwould matter later\b",
    "BadEnding": r"\bnever (?:came back|smiled again|found it)\b",
    "MoralValue": r"\bThe lesson was\b",
    "Conflict": r"\bstarted to argue\b",
    "Dialogue": r"\"[^\"]+\" (?:said|asked|shouted)\b",
}
_MARKER_RES = {f: re.compile(p) for f, p in MARKERS.items()}


def detect_features(story: str) -> tuple[str, ...]:
    """The features whose marker phrases occur in `story`, in canonical order."""
    return tuple(f for f in FEATURES if _MARKER_RES[f].search(story))


@dataclass(frozen=True)
class CorpusSpec:
    """How often each feature is written into a story (independently)."""

    feature_rates: tuple[tuple[str, float], ...] = (
        ("Dialogue", 0.4), ("Twist", 0.3), ("BadEnding", 0.2), ("MoralValue", 0.3),
        ("Foreshadowing", 0.3), ("Conflict", 0.3))


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def write_story(rng: np.random.Generator, features: tuple[str, ...]) -> StoryRecord:
    """One story with exactly `features` (and no other feature's marker)."""
    name, friend = rng.choice(len(NAMES), size=2, replace=False)
    name, friend = NAMES[name], NAMES[friend]
    kind, adj, place = _pick(rng, KINDS), _pick(rng, ADJECTIVES), _pick(rng, PLACES)
    obj, colour, verb = _pick(rng, OBJECTS), _pick(rng, COLOURS), _pick(rng, VERBS)
    has = set(features)
    s = [f"Once upon a time, there was {_a(adj)} {kind} named {name}.",
         f"{name} liked to {verb} in the {place} with {_a(colour)} {obj}."]
    if "Foreshadowing" in has:
        s.append(f"{name} did not know that the {colour} {obj} would matter later.")
    s.append(f"One day, {name} met {friend} in the {place}.")
    if "Dialogue" in has:
        s.append(f"\"Do you want to {verb} with me?\" asked {name}.")
        s.append(f"\"Yes, I would love to!\" said {friend}.")
    if "Conflict" in has:
        s.append(f"But {friend} wanted the {obj} too, and they started to argue.")
    if "Twist" in has:
        s.append(f"Then something unexpected happened: the {obj} was really {_pick(rng, SURPRISES)}!")
    if "BadEnding" in has:
        s.append(f"A strong wind took the {obj} away, and it never came back.")
        s.append(f"{name} was sad for a long time.")
    else:
        s.append(f"{name} and {friend} played together until the sun went down.")
    if "MoralValue" in has:
        s.append(f"The lesson was that {_pick(rng, MORALS)}.")
    story = " ".join(s)
    plain = [x for x in s if '"' not in x]
    words = (verb, obj.split()[-1], adj)
    summary = (f"{name} and {friend} {'argue over' if 'Conflict' in has else 'play with'} {_a(obj)} in the {place}"
               + (", which turns out to be a surprise." if "Twist" in has else "."))
    return StoryRecord(story=story, features=tuple(f for f in FEATURES if f in has), words=words,
                       summary=summary, random_sentence=plain[int(rng.integers(len(plain)))])


def generate(n: int, seed: int, spec: CorpusSpec = CorpusSpec()) -> Iterator[StoryRecord]:
    """`n` stories; each feature present independently with its rate. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    names = [f for f, _ in spec.feature_rates]
    rates = np.array([r for _, r in spec.feature_rates])
    for _ in range(n):
        chosen = tuple(f for f, keep in zip(names, rng.random(len(names)) < rates, strict=True) if keep)
        yield write_story(rng, chosen)
