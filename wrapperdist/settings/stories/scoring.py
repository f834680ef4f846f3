"""The generation score without the copy channel (issue 14): prompts whose instruction lines carry
no marker of the scored feature, and a detector that does not credit text copied from the prompt.

Why: a held-out twist story's "Random sentence:" can be its own twist sentence, and the Instruct
format teaches the model to write that sentence into the story, so a model that only follows the
format would "write a twist". Both defences are applied: the prompt is cleaned, and any stretch of
the generation that repeats the prompt is masked before the detector runs."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from wrapperdist.settings.stories.generator import detect_features
from wrapperdist.settings.stories.records import StoryRecord, normalize_feature

COPY_NGRAM = 4  # words: a run of this many words that also occurs in the prompt counts as copied
MASK = "[copied]"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def has_marker(text: str, feature: str) -> bool:
    return normalize_feature(feature) in detect_features(text)


def sentences(story: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(story.strip()) if s]


def clean_record(record: StoryRecord, feature: str) -> StoryRecord:
    """`record` with no marker of `feature` in any instruction line (the Features line keeps the
    request itself). A marked random sentence is replaced by the story's first unmarked, dialogue-free
    sentence (what the corpus draws random sentences from), or dropped; marked words and a marked
    summary are dropped."""
    sentence = record.random_sentence
    if sentence is not None and has_marker(sentence, feature):
        options = [x for x in sentences(record.story) if '"' not in x and not has_marker(x, feature)]
        sentence = options[0] if options else None
    words = tuple(w for w in record.words if not has_marker(w, feature))
    summary = None if record.summary is not None and has_marker(record.summary, feature) else record.summary
    return replace(record, random_sentence=sentence, words=words, summary=summary)


def _norm(word: str) -> str:
    return re.sub(r"\W+", "", word.lower())


def copy_free(generation: str, prompt: str, n: int = COPY_NGRAM) -> str:
    """`generation` with every word that lies in a run of `n` words also found in `prompt` replaced by
    MASK, so a marker the model copied from its instructions cannot match the detector."""
    gen = generation.split()
    keys = [_norm(w) for w in gen]
    source = [_norm(w) for w in prompt.split()]
    seen = {tuple(source[i : i + n]) for i in range(len(source) - n + 1)}
    copied = [False] * len(gen)
    for i in range(len(gen) - n + 1):
        if tuple(keys[i : i + n]) in seen:
            copied[i : i + n] = [True] * n
    return " ".join(MASK if c else w for w, c in zip(gen, copied, strict=True))


def feature_score(generations: list[str], prompts: list[str], feature: str) -> float:
    """Share of generations that have `feature` in text they did not copy from their own prompt
    (the stand-in for the paper's GPT-3.5 twist classifier; exact on the generated corpus)."""
    if len(generations) != len(prompts):
        raise ValueError(f"{len(generations)} generations for {len(prompts)} prompts")
    return float(np.mean([has_marker(copy_free(g, p), feature) for g, p in zip(generations, prompts, strict=True)]))
