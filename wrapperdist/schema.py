"""Pydantic building blocks shared by every configuration section, and the registry of setting
sections. Kept apart from `config.py` so a setting's own config section (in its folder) can build
on them without importing the experiment config that in turn imports it."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class Strict(BaseModel):
    """Unknown keys are errors; configs are immutable once validated (they are hashed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SettingSection(Strict):
    """The `setting:` section of an experiment: which experimental setting runs, and its own fields.

    Subclasses fix `name` to a literal and register with `@register_section`. Class variables say
    how the generic parts of the pipeline treat the section's fields, so no code outside the
    setting's folder needs to know them:
    - `finetune_fields`: fields that only shape fine-tuning; every other field shapes pretraining,
      so a pretrained model is shared by all fine-tunes that differ only in these.
    - `trains_pretraining`: False where "pretraining" is not training (Tracr compiles), so
      `pretrain.optim` may be left out."""

    name: str
    finetune_fields: ClassVar[frozenset[str]] = frozenset()
    trains_pretraining: ClassVar[bool] = True

    @classmethod
    def of(cls, experiment: Any) -> Self:
        """`experiment.setting`, checked to be this setting's section (a setting's code reads its own
        fields through this, typed)."""
        section = experiment.setting
        if not isinstance(section, cls):
            raise TypeError(f"expected a {cls.__name__} config, got the {section.name!r} setting's")
        return section

    def pretrain_part(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(self.finetune_fields))

    def finetune_part(self) -> dict[str, Any]:
        return self.model_dump(mode="json", include=set(self.finetune_fields))


SECTIONS: dict[str, type[SettingSection]] = {}


def register_section(cls: type[SettingSection]) -> type[SettingSection]:
    """Class decorator: make `setting: {name: <cls's name>, ...}` validate as `cls`."""
    name = cls.model_fields["name"].default
    if not isinstance(name, str):
        raise TypeError(f"{cls.__name__}.name needs a default: the setting's name")
    SECTIONS[name] = cls
    return cls


def parse_section(value: Any) -> SettingSection:
    """The registry-driven discriminated union: `name` picks the section class. Nested validation
    errors keep their path (pydantic prefixes them with `setting.`)."""
    if isinstance(value, SettingSection):
        return value
    if not isinstance(value, dict) or "name" not in value:
        raise ValueError(f"expected a mapping with a `name`, one of: {', '.join(sorted(SECTIONS))}")
    cls = SECTIONS.get(value["name"])
    if cls is None:
        raise ValueError(f"unknown setting {value['name']!r}; known: {', '.join(sorted(SECTIONS))}")
    return cls.model_validate(value)
