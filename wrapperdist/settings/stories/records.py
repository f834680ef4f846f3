"""One story with its TinyStories-Instruct fields, and the instruction-format text a model reads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

# The features TinyStories-Instruct labels stories with (its instruction.features values).
FEATURES = ("Dialogue", "Twist", "BadEnding", "MoralValue", "Foreshadowing", "Conflict")
_CANONICAL = {f.lower(): f for f in FEATURES}


def normalize_feature(name: str) -> str:
    """'badending', 'Bad Ending', 'BadEnding' -> 'BadEnding'; unknown names are kept as written
    (title-cased), so a corpus with other features still loads."""
    key = re.sub(r"[\s_-]+", "", name.strip()).lower()
    return _CANONICAL.get(key, name.strip())


@dataclass(frozen=True)
class StoryRecord:
    story: str
    features: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    summary: str | None = None
    random_sentence: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)  # fields we do not interpret

    def has(self, feature: str) -> bool:
        return normalize_feature(feature) in self.features

    def with_features(self, features: tuple[str, ...]) -> StoryRecord:
        return replace(self, features=tuple(dict.fromkeys(features)))


INSTRUCTION_ORDER = ("Features", "Words", "Summary", "Random sentence")


def instruction_lines(record: StoryRecord) -> list[str]:
    lines = []
    if record.features:
        lines.append("Features: " + ", ".join(record.features))
    if record.words:
        lines.append("Words: " + ", ".join(record.words))
    if record.summary:
        lines.append("Summary: " + record.summary)
    if record.random_sentence:
        lines.append("Random sentence: " + record.random_sentence)
    return lines


def prompt_text(record: StoryRecord) -> str:
    """The instructions up to and including 'Story:' — what a model is prompted with. No trailing
    space: a byte-level BPE attaches the space to the story's first word (' Once'), so a prompt
    ending in a space would start the story off the training distribution."""
    return "\n".join([*instruction_lines(record), "Story:"])


def to_text(record: StoryRecord) -> str:
    """The Instruct-format training text: the instruction lines, then the story."""
    return prompt_text(record) + " " + record.story
