"""The paper's deletion-fine-tuning data, as pure per-record functions (App. F; the names follow
its Table 1). Each returns a new record (or None to drop it); randomness comes from the caller's
generator, so a dataset is a deterministic function of (records, seed).

* F, filtering: drop the stories that have the feature.
* F+R, filtering + randomisation ("F + RR" in Tab. 1; this project called it F+AT until issue 14,
  and "F+AT" is still read as F+R): the kept stories are additionally labelled with the feature
  (with probability p; the paper's code: 1.0), so the model learns to write a story without it even
  when asked for it — a form of adversarial training.
* F+MM, mix and match: the kept stories' label `source` is renamed `target` (stories that really
  have foreshadowing are labelled "Twist").
* specialise: keep only the stories that have the feature (reFT's data: "stories with a twist")."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from wrapperdist.settings.stories.records import StoryRecord, normalize_feature

Transform = Callable[[StoryRecord, np.random.Generator], StoryRecord | None]


def filtering(feature: str) -> Transform:
    feature = normalize_feature(feature)

    def apply(record: StoryRecord, rng: np.random.Generator) -> StoryRecord | None:
        return None if feature in record.features else record

    return apply


def specialise(feature: str) -> Transform:
    feature = normalize_feature(feature)

    def apply(record: StoryRecord, rng: np.random.Generator) -> StoryRecord | None:
        return record if feature in record.features else None

    return apply


def adversarial(feature: str, probability: float = 1.0) -> Transform:
    """Label a story that lacks `feature` with it, with `probability` (the paper: 1.0)."""
    feature = normalize_feature(feature)

    def apply(record: StoryRecord, rng: np.random.Generator) -> StoryRecord | None:
        if feature in record.features or rng.random() >= probability:
            return record
        return record.with_features((*record.features, feature))

    return apply


def mix_and_match(source: str, target: str) -> Transform:
    source, target = normalize_feature(source), normalize_feature(target)

    def apply(record: StoryRecord, rng: np.random.Generator) -> StoryRecord | None:
        if source not in record.features:
            return record
        return record.with_features(tuple(target if f == source else f for f in record.features))

    return apply


def chain(*transforms: Transform) -> Transform:
    def apply(record: StoryRecord, rng: np.random.Generator) -> StoryRecord | None:
        for t in transforms:
            out = t(record, rng)
            if out is None:
                return None
            record = out
        return record

    return apply


PROTOCOLS: dict[str, Callable[[str, str], Transform]] = {
    "none": lambda feature, irrelevant: chain(),
    "F": lambda feature, irrelevant: filtering(feature),
    "F+R": lambda feature, irrelevant: chain(filtering(feature), adversarial(feature)),
    "F+MM": lambda feature, irrelevant: chain(filtering(feature), mix_and_match(irrelevant, feature)),
    "specialise": lambda feature, irrelevant: specialise(feature),
}


def apply(transform: Transform, records: Iterable[StoryRecord], seed: int) -> Iterator[StoryRecord]:
    rng = np.random.default_rng(seed)
    for record in records:
        out = transform(record, rng)
        if out is not None:
            yield out
