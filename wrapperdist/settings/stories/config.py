"""The TinyStories setting's config section (`setting: {name: stories, ...}`), paper Sec. 5.2, App. F."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from wrapperdist.schema import PositiveInt, SettingSection, register_section

# The protocol names this project used before issue 14 -> the paper's. Kept here, not beside the
# transforms, so that validating a config imports no numpy (the CLI's config path stays light).
ALIASES = {"F+AT": "F+R"}


@register_section
class StoriesSection(SettingSection):
    """The TinyStories setting: a small LM that learns a story feature, then has it deleted.

    A small LM pretrained on stories with labelled features, fine-tuned to delete one (`feature`,
    the paper's Twist) with one of the paper's protocols, measured by a probe and by how often its
    generations have the feature, and revived by reFT on stories that have it. The corpus is the real
    TinyStories files at `path` (read locally, streamed) or, by default, the project's procedural
    stand-in."""

    name: Literal["stories"] = "stories"
    finetune_fields = frozenset({"deletion"})

    path: Path | None = Field(None, description="TinyStories file or folder (.txt / .json); default: generated")
    format: Literal["auto", "plain", "instruct", "json"] = Field("auto", description="file format of `path`")
    stories: PositiveInt = Field(20_000, description="generated corpus size, or how many real stories to read")
    corpus_seed: int = Field(0, description="seed of the generated corpus")
    pretrain_share: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.8, description="share of the corpus for pretraining; the rest feeds fine-tuning and reFT (paper: 80/20)")
    eval_stories: PositiveInt = Field(400, description="held-out stories for losses, probes and prompts")
    vocab_size: Annotated[int, Field(ge=300)] = Field(1024, description="BPE vocabulary size")
    seq_len: Annotated[int, Field(ge=32)] = Field(192, description="context length in tokens")
    feature: str = Field("Twist", description="the capability fine-tuning deletes")
    irrelevant_feature: str = Field("Foreshadowing", description="the label F+MM renames to `feature`")
    deletion: Literal["F", "F+R", "F+MM"] = Field(
        "F", description="the deletion fine-tuning's data (paper Tab. 1): filtering, + randomisation, + mix & match; "
                         "'F+AT' is read as F+R")
    pretrain_without_feature: bool = Field(False, description="the 'Not in PT' control: pretrain with it filtered out")
    generation_prompts: PositiveInt = Field(48, description="prompts requesting the feature, per evaluation")
    max_new_tokens: PositiveInt = Field(160, description="generation length per prompt")
    temperature: Annotated[float, Field(gt=0.0)] = Field(1.0, description="sampling temperature")
    top_k: PositiveInt | None = Field(None, description="sample among the k likeliest tokens only")

    @field_validator("deletion", mode="before")
    @classmethod
    def _paper_name(cls, v: object) -> object:
        return ALIASES.get(v, v) if isinstance(v, str) else v

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.exists():
            raise ValueError(f"no such file or folder: {v}")
        return v
