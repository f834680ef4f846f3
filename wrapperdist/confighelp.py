"""The configuration reference for `--help`, generated from the pydantic models' field descriptions
(the one source: no hand-written copy to drift)."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from wrapperdist.schema import SECTIONS, SettingSection


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models an annotation refers to (through Optional, unions and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) or args:
        return [m for a in args for m in _models_in(a)]
    return []


def _default(info: Any) -> str:
    if info.default is PydanticUndefined:
        return "" if info.default_factory is not None else " (required)"
    value = info.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return f" (default: {value if isinstance(value, Path) else repr(value)})"


def _summary(doc: str | None) -> str:
    """A docstring's first sentence, on one line."""
    text = " ".join((doc or "").split())
    return re.split(r"\.\s+(?=[A-Z])", text)[0].rstrip(".")


def field_reference(model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per field, `dotted.path: description (default)`, nested sections expanded."""
    lines = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = [m for m in _models_in(info.annotation) if m is not SettingSection]
        if isinstance(info.default, BaseModel):  # a whole sub-model as the default: show it as one value
            nested = []
        if name == "setting" and prefix == "":
            lines.append(f"  {path}: {info.description}")
            for section_name, section in sorted(SECTIONS.items()):
                lines.append(f"  setting (name: {section_name}): {_summary(section.__doc__)}")
                lines += [line for line in field_reference(section, f"{path}.") if not line.endswith(".name")]
        elif nested:
            lines += field_reference(nested[0], f"{path}.")
        else:
            text = info.description or ""
            lines.append(f"  {path}: {text}{_default(info)}".rstrip())
    return [line for line in lines if not line.strip().startswith(f"{prefix}name: ") or prefix == ""]
