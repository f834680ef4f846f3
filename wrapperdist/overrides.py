"""`--set path=value` on the command line: one value changed without writing a YAML file.

Values are YAML (`true`, `null`, `[50, 200]`, `medium`), so `--set` reads like the file it
overrides; the result is validated like the file, and what ran is what MLflow records."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from wrapperdist.yamlio import YamlError, parse_yaml

# PyYAML follows YAML 1.1, whose floats need a dot: `1e-4` would stay the string "1e-4".
_EXPONENT_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


class OverrideError(ValueError):
    """A malformed `--set` argument (one line naming it)."""


def parse_value(text: str) -> Any:
    if _EXPONENT_FLOAT.fullmatch(text.strip()):
        return float(text)
    try:
        return parse_yaml(text, "value") if text.strip() else ""
    except YamlError as err:
        raise OverrideError(f"--set value {text!r}: {str(err).removeprefix('value:')}") from None


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """['finetune.optim.lr=1e-4', ...] -> [('finetune.optim.lr', 0.0001), ...]."""
    out = []
    for item in items:
        path, sep, value = item.partition("=")
        path = path.strip()
        if not sep or not path or any(not part for part in path.split(".")):
            raise OverrideError(f"--set {item!r}: expected PATH=VALUE, e.g. finetune.optim.lr=1e-4")
        out.append((path, parse_value(value)))
    return out


def set_dotted(data: dict[str, Any], path: str, value: Any) -> None:
    """data['a']['b']['c'] = value for path 'a.b.c', creating missing sections."""
    *parents, last = path.split(".")
    node = data
    for i, key in enumerate(parents):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            where = ".".join(parents[: i + 1])
            raise OverrideError(f"--set {path}: {where} is {child!r}, not a section")
        node = child
    node[last] = value


def apply_overrides(data: dict[str, Any], overrides: list[tuple[str, Any]],
                    keyed: Sequence[str] = ()) -> None:
    """Apply overrides in order. Under a `keyed` section (a mapping whose keys are themselves
    dotted paths, such as a sweep's `grid`), the rest of the path is one key, not more nesting."""
    for path, value in overrides:
        section = next((k for k in keyed if path.startswith(k + ".")), None)
        if section is None:
            set_dotted(data, path, value)
            continue
        target = data
        for part in section.split("."):
            child = target.get(part)
            if child is None:
                child = target[part] = {}
            if not isinstance(child, dict):
                raise OverrideError(f"--set {path}: {section} is {child!r}, not a section")
            target = child
        target[path[len(section) + 1:]] = value
