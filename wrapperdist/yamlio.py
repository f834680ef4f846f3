"""Reading YAML files for people: every problem is one `FILE: problem` line, never a traceback.

PyYAML's `safe_load` decodes with whatever it guesses and keeps the last of two equal mapping keys
without a word; a config whose `lr:` appears twice then runs with a value nobody chose. Here the
bytes are decoded as UTF-8 ourselves (a UTF-16 file saved by an editor, or binary garbage, is named
as such), and a loader refuses duplicate keys, naming the key and both lines."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode


class YamlError(ValueError):
    """A file that is not readable YAML; `str()` is one line naming the file and the problem."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping (YAML 1.2 says they are an error)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are not duplicates
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base constructor reports unhashable keys
            if key in seen:
                raise ConstructorError(None, None, f"duplicate key {key!r} (first on line {seen[key]})",
                                       key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        hint = ""
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = "; it looks like UTF-16: save it as UTF-8"
        raise YamlError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}{hint})") from None
    if "\x00" in text:
        raise YamlError(f"{path}: not UTF-8 text (NUL byte at offset {text.index(chr(0))}: a binary file?)")
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is harmless


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text (duplicate keys refused); errors name `source`, the line and the column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        if problem.startswith("duplicate key"):
            raise YamlError(f"{where}: {problem}") from None
        raise YamlError(f"{where}: YAML syntax error: {problem}") from None


def read_yaml_file(path: str | Path) -> Any:
    """The parsed content of a YAML file (any type); YamlError names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise YamlError(f"{path}: file not found")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise YamlError(f"{path}: cannot read ({err.strerror})") from None
    return parse_yaml(_decode(path, data), str(path))
