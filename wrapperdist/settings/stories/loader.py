"""Streaming readers for the real TinyStories files, from a local path (nothing is downloaded):

* plain stories text (`TinyStories-train.txt`): stories separated by `<|endoftext|>`;
* TinyStories-Instruct text: records separated by `<|endoftext|>`, each with `Features:`, `Words:`,
  `Random sentence:`, `Summary:` lines in any subset and order, then `Story:` and the story;
* the full release's JSON shards (`data00.json` …): one array of objects with `story`, `summary`
  and `instruction: {words, features, …}`.

Files are read in fixed-size chunks, so a multi-GB file is never held in memory. A malformed record
is skipped, counted in `LoadStats` by reason, and warned about (once per reason and file, with the
count at the end) — never dropped silently."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wrapperdist.settings.stories.records import StoryRecord, normalize_feature

SEPARATOR = "<|endoftext|>"
CHUNK_CHARS = 1 << 16


@dataclass
class LoadStats:
    read: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, source: str, reason: str) -> None:
        if not self.skipped[reason]:
            warnings.warn(f"{source}: skipping malformed record ({reason}); further ones are counted", stacklevel=3)
        self.skipped[reason] += 1


def split_stream(chunks: Iterable[str], separator: str = SEPARATOR) -> Iterator[str]:
    """Pieces between separators across chunk boundaries (a separator may straddle two chunks)."""
    pending = ""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(separator)
        yield from complete
    yield pending


def read_chunks(path: str | Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        while chunk := handle.read(chunk_chars):
            yield chunk


def read_plain(path: str | Path, stats: LoadStats | None = None,
               chunk_chars: int = CHUNK_CHARS) -> Iterator[StoryRecord]:
    stats = stats if stats is not None else LoadStats()
    for piece in split_stream(read_chunks(path, chunk_chars)):
        text = piece.strip()
        if not text:
            continue  # between two separators, or the file's end: not a record
        stats.read += 1
        yield StoryRecord(story=text)


_FIELDS = {"features": "Features", "words": "Words", "summary": "Summary", "random sentence": "Random sentence",
           "sentence": "Random sentence", "story": "Story"}


def _split_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_instruct(text: str) -> StoryRecord | str:
    """One Instruct record -> StoryRecord, or the reason it is malformed."""
    fields: dict[str, str] = {}
    story_lines: list[str] | None = None
    for line in text.strip().splitlines():
        if story_lines is not None:  # everything after 'Story:' is the story
            story_lines.append(line)
            continue
        name, sep, value = line.partition(":")
        key = _FIELDS.get(name.strip().lower()) if sep else None
        if key is None:
            if line.strip():
                return f"unexpected line before 'Story:': {line.strip()[:40]!r}"
            continue
        if key == "Story":
            story_lines = [value.strip()]
        elif key in fields:
            return f"field {key!r} given twice"
        else:
            fields[key] = value.strip()
    if story_lines is None:
        return "no 'Story:' field"
    story = "\n".join(story_lines).strip()
    if not story:
        return "empty story"
    return StoryRecord(
        story=story,
        features=tuple(normalize_feature(f) for f in _split_list(fields.get("Features", ""))),
        words=_split_list(fields.get("Words", "")),
        summary=fields.get("Summary") or None,
        random_sentence=fields.get("Random sentence") or None,
    )


def read_instruct(path: str | Path, stats: LoadStats | None = None,
                  chunk_chars: int = CHUNK_CHARS) -> Iterator[StoryRecord]:
    stats = stats if stats is not None else LoadStats()
    for piece in split_stream(read_chunks(path, chunk_chars)):
        if not piece.strip():
            continue
        parsed = parse_instruct(piece)
        if isinstance(parsed, str):
            stats.skip(str(path), parsed)
            continue
        stats.read += 1
        yield parsed


def _json_record(obj: object) -> StoryRecord | str:
    if not isinstance(obj, dict):
        return "not an object"
    story = obj.get("story")
    if not isinstance(story, str) or not story.strip():
        return "no 'story' string"
    instruction = obj.get("instruction") or {}
    if not isinstance(instruction, dict):
        return "'instruction' is not an object"
    features, words = instruction.get("features") or [], instruction.get("words") or []
    if not (isinstance(features, list) and isinstance(words, list)):
        return "'features'/'words' are not lists"
    summary = obj.get("summary")
    return StoryRecord(
        story=story.strip(),
        features=tuple(normalize_feature(str(f)) for f in features),
        words=tuple(str(w) for w in words),
        summary=summary if isinstance(summary, str) and summary else None,
        extra={k: str(v) for k, v in instruction.items() if k not in ("features", "words")},
    )


def iter_json_array(chunks: Iterable[str], max_record_chars: int = 1 << 20) -> Iterator[object | ValueError]:
    """The elements of one top-level JSON array, decoded one at a time as the text streams in. An
    element that does not decode (within `max_record_chars`, so a bad record never pulls the rest
    of the file into memory) is yielded as its ValueError; reading resumes after it."""
    decoder, chunks, buffer, more = json.JSONDecoder(), iter(chunks), "", True

    def refill() -> bool:
        nonlocal buffer, more
        chunk = next(chunks, None)
        if chunk is None:
            more = False
            return False
        buffer += chunk
        return True

    while not buffer.strip():
        if not refill():
            return
    buffer = buffer.lstrip()
    if not buffer.startswith("["):
        yield ValueError("the file is not a JSON array")
        return
    buffer = buffer[1:]
    while True:
        buffer = buffer.lstrip()
        if buffer.startswith(","):
            buffer = buffer[1:].lstrip()
        if not buffer:
            if more and refill():
                continue
            return  # a truncated file simply ends
        if buffer.startswith("]"):
            return
        try:
            obj, end = decoder.raw_decode(buffer)
        except ValueError as err:
            if more and len(buffer) < max_record_chars and refill():
                continue  # most likely the element is cut by the chunk boundary
            yield err
            skip = _next_boundary(buffer)
            if skip is None:
                return
            buffer = buffer[skip:]
            continue
        yield obj
        buffer = buffer[end:]


def _next_boundary(buffer: str) -> int | None:
    """Index just past the next top-level-looking '},' — good enough to step over one bad element."""
    at = buffer.find("},")
    return None if at < 0 else at + 2


def read_json_shard(path: str | Path, stats: LoadStats | None = None,
                    chunk_chars: int = CHUNK_CHARS) -> Iterator[StoryRecord]:
    stats = stats if stats is not None else LoadStats()
    for obj in iter_json_array(read_chunks(path, chunk_chars)):
        parsed = f"invalid JSON: {obj}" if isinstance(obj, ValueError) else _json_record(obj)
        if isinstance(parsed, str):
            stats.skip(str(path), parsed.split(":")[0] if parsed.startswith("invalid JSON") else parsed)
            continue
        stats.read += 1
        yield parsed


FORMATS = {"plain": read_plain, "instruct": read_instruct, "json": read_json_shard}


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if path.suffix == ".json":
        return "json"
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = handle.read(4096)
    first = head.split(SEPARATOR)[0]
    return "instruct" if any(line.startswith(("Story:", "Features:", "Summary:", "Words:"))
                             for line in first.splitlines()) else "plain"


def read_stories(paths: str | Path | Iterable[str | Path], fmt: str = "auto",
                 stats: LoadStats | None = None) -> Iterator[StoryRecord]:
    """Records from one file, a folder (its *.txt and *.json, sorted) or a list of them."""
    if isinstance(paths, str | Path):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix in (".txt", ".json"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    stats = stats if stats is not None else LoadStats()
    for f in files:
        yield from FORMATS[detect_format(f) if fmt == "auto" else fmt](f, stats)
