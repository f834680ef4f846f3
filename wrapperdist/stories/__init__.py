"""The TinyStories setting (paper Sec. 5.2, App. F): story records and their real file formats,
the paper's data transforms, an offline procedural corpus with labelled features, and a tokenizer."""

from wrapperdist.stories.records import FEATURES, StoryRecord, normalize_feature

__all__ = ["FEATURES", "StoryRecord", "normalize_feature"]
