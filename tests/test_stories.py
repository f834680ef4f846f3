"""TinyStories data: the real file formats (streamed, malformed records counted), the paper's
transforms, the offline generator's ground truth, and the tokenizer."""

import json
import tracemalloc
from collections import Counter

import numpy as np
import pytest

from wrapperdist.settings.stories import transforms as T
from wrapperdist.settings.stories.generator import CorpusSpec, detect_features, generate
from wrapperdist.settings.stories.loader import (
    SEPARATOR,
    LoadStats,
    read_instruct,
    read_json_shard,
    read_plain,
    read_stories,
)
from wrapperdist.settings.stories.records import normalize_feature, prompt_text, to_text
from wrapperdist.settings.stories.tokenizer import (
    BOS,
    EOS,
    PAD,
    load_tokenizer,
    save_tokenizer,
    special_id,
    train_tokenizer,
)

SEP = "<|endoftext|>"
INSTRUCT = f"""Features: Dialogue, Twist
Words: run, ball, happy
Summary: Tom finds a ball.
Random sentence: Tom ran.
Story: Tom ran to the park.
"Look!" said Tom.
{SEP}
Story: A story with no instructions at all.
{SEP}
Summary: Fields in another order.
Story: Sue sang.
Words: this line belongs to the story
Features: BadEnding
{SEP}
Summary: malformed, there is no story field
Words: a, b
{SEP}
Features: Twist
Features: Dialogue
Story: malformed, a field twice
{SEP}
This line has no field name
Story: malformed too
{SEP}
Random sentence: She smiled.
Features: bad ending, moral value
Story: Mia smiled.
"""


def test_instruct_file_with_malformed_records(tmp_path):
    path = tmp_path / "instruct.txt"
    path.write_text(INSTRUCT)
    stats = LoadStats()
    with pytest.warns(UserWarning, match="skipping malformed record"):
        records = list(read_instruct(path, stats, chunk_chars=7))  # tiny chunks: separators straddle them
    assert stats.read == 4 and stats.total_skipped == 3
    assert set(stats.skipped) == {"no 'Story:' field", "field 'Features' given twice",
                                  "unexpected line before 'Story:': 'This line has no field name'"}
    first, bare, reordered, last = records
    assert first.features == ("Dialogue", "Twist") and first.words == ("run", "ball", "happy")
    assert first.summary == "Tom finds a ball." and first.random_sentence == "Tom ran."
    assert first.story == 'Tom ran to the park.\n"Look!" said Tom.'
    assert bare.features == () and bare.story == "A story with no instructions at all."
    assert reordered.story.startswith("Sue sang.\nWords: this line")  # after 'Story:' everything is story
    assert last.features == ("BadEnding", "MoralValue") and last.random_sentence == "She smiled."
    assert normalize_feature("Bad Ending") == normalize_feature("badending") == "BadEnding"


def write_instruct_file(path, records) -> int:
    """Write records in the TinyStories-Instruct text format (what `read_instruct` parses)."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(to_text(record) + "\n" + SEPARATOR + "\n")
            count += 1
    return count


def test_generated_records_round_trip_through_the_instruct_format(tmp_path):
    records = list(generate(200, seed=3))
    assert write_instruct_file(tmp_path / "g.txt", records) == 200
    assert list(read_instruct(tmp_path / "g.txt")) == records
    assert list(read_stories(tmp_path)) == records  # a folder, format detected


def test_plain_stories(tmp_path):
    (tmp_path / "plain.txt").write_text(f"One.\nTwo lines.\n{SEP}\n\n{SEP}Three.{SEP}\n")
    stats = LoadStats()
    assert [r.story for r in read_plain(tmp_path / "plain.txt", stats, chunk_chars=3)] == ["One.\nTwo lines.",
                                                                                             "Three."]
    assert stats.read == 2 and stats.total_skipped == 0


def test_json_shard_streams_and_skips_bad_elements(tmp_path):
    good = [{"story": r.story, "summary": r.summary, "source": "GPT-4",
             "instruction": {"prompt:": "Write a short story", "words": list(r.words), "features": list(r.features)}}
            for r in generate(50, seed=1)]
    text = json.dumps(good[:10])[:-1] + ', {"story": 12}, {"summary": "no story"}, {"story": "x", broken}, ' \
        + json.dumps(good[10:])[1:]
    path = tmp_path / "data00.json"
    path.write_text(text)
    stats = LoadStats()
    with pytest.warns(UserWarning):
        records = list(read_json_shard(path, stats, chunk_chars=97))
    assert stats.read == 50 and stats.total_skipped == 3, stats.skipped
    assert [r.story for r in records] == [g["story"] for g in good]
    assert records[0].features == tuple(good[0]["instruction"]["features"])
    assert records[0].extra == {"prompt:": "Write a short story"}


def test_a_file_larger_than_the_memory_budget_streams(tmp_path):
    """30 MB on disk, read with a 2 MB peak: records are yielded chunk by chunk, never all at once."""
    path = tmp_path / "big.txt"
    block = "".join(to_text(r) + f"\n{SEP}\n" for r in generate(500, seed=0))
    with open(path, "w") as handle:
        while handle.tell() < 30_000_000:
            handle.write(block)
    size = path.stat().st_size
    tracemalloc.start()
    count = sum(1 for _ in read_instruct(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert size > 30_000_000 and count == 500 * (size // len(block.encode()))
    assert peak < 2_000_000, f"peak {peak / 1e6:.1f} MB while streaming a {size / 1e6:.0f} MB file"


def test_transforms_are_the_papers_protocols():
    records = list(generate(400, seed=5))
    twist = [r for r in records if r.has("Twist")]
    f = list(T.apply(T.PROTOCOLS["F"]("Twist", "Foreshadowing"), records, seed=0))
    assert len(f) == len(records) - len(twist) and not any(r.has("Twist") for r in f)
    at = list(T.apply(T.PROTOCOLS["F+R"]("Twist", "Foreshadowing"), records, seed=0))
    assert [r.story for r in at] == [r.story for r in f] and all(r.has("Twist") for r in at)
    assert not any(detect_features(r.story).count("Twist") for r in at)  # labelled, not written
    mm = list(T.apply(T.PROTOCOLS["F+MM"]("Twist", "Foreshadowing"), records, seed=0))
    relabelled = [r for r in mm if r.has("Twist")]
    assert relabelled and all("Foreshadowing" in detect_features(r.story) and not r.has("Foreshadowing")
                              for r in relabelled)
    assert list(T.apply(T.PROTOCOLS["specialise"]("Twist", ""), records, seed=0)) == twist
    half = list(T.apply(T.adversarial("Twist", 0.5), f, seed=1))
    assert 0.35 < np.mean([r.has("Twist") for r in half]) < 0.65
    assert half == list(T.apply(T.adversarial("Twist", 0.5), f, seed=1))  # deterministic in the seed


def test_generator_labels_are_ground_truth():
    spec = CorpusSpec()
    n = 3000
    records = list(generate(n, seed=11, spec=spec))
    assert all(detect_features(r.story) == r.features for r in records)
    counts = Counter(f for r in records for f in r.features)
    for feature, rate in spec.feature_rates:
        assert abs(counts[feature] / n - rate) < 4 * np.sqrt(rate * (1 - rate) / n), feature
    assert list(generate(20, seed=11)) == records[:20] and list(generate(20, seed=12)) != records[:20]
    prompt = prompt_text(records[0])
    assert prompt.endswith("Story:") and to_text(records[0]) == prompt + " " + records[0].story


def test_tokenizer_trains_offline_and_round_trips(tmp_path):
    texts = [to_text(r) for r in generate(1000, seed=2)]
    tok = train_tokenizer(texts, vocab_size=600)
    assert tok.get_vocab_size() == 600
    assert [special_id(tok, t) for t in (PAD, BOS, EOS)] == [0, 1, 2]
    for text in texts[:50]:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text and len(ids) < len(text) / 2  # merges learned: < 2 chars per token
    loaded = load_tokenizer(save_tokenizer(tok, tmp_path / "tok" / "tokenizer.json"))
    assert loaded.encode(texts[0]).ids == tok.encode(texts[0]).ids
