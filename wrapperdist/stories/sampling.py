"""`wrapperdist generate`: load a stories-setting checkpoint (file, run folder or MLflow run) and
sample continuations of a prompt, with the detector's verdict on each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wrapperdist.stories.generator import detect_features
from wrapperdist.stories.lm import sample
from wrapperdist.stories.records import normalize_feature
from wrapperdist.stories.stages import tokenizer_of
from wrapperdist.stories.tokenizer import BOS, EOS, special_id


@dataclass
class Sample:
    text: str
    features: tuple[str, ...]


def build_prompt(prompt: str, features: list[str] | None = None) -> str:
    """`prompt` as given (escaped newlines '\\n' become newlines); with `features`, the Instruct
    prefix 'Features: …\\nStory:' goes first, so the prompt is the story's opening."""
    text = prompt.replace("\\n", "\n")
    if features:  # "Story:" then the opening with its leading space, as in the training text
        story = " " + text if text else ""
        text = "Features: " + ", ".join(normalize_feature(f) for f in features) + "\nStory:" + story
    return text


def resolve_checkpoint(ref: str, work: Path) -> Path:
    """A checkpoint file, a folder with model.pt, or an MLflow run id whose run (or a fine-tune /
    pretrain child) logged checkpoint/model.pt."""
    path = Path(ref)
    if path.is_file():
        return path
    if path.is_dir() and (path / "model.pt").is_file():
        return path / "model.pt"
    from wrapperdist.tracking import STAGE_TAG, Tracker

    tracker = Tracker("wrapperdist")
    try:
        run = tracker.client.get_run(ref)
    except Exception as exc:  # MLflow raises several types for an unknown id
        raise ValueError(f"{ref!r}: neither a checkpoint, a folder with model.pt, nor an MLflow run ({exc})") from None
    stage = run.data.tags.get(STAGE_TAG)
    if stage in ("pretrain", "finetune", "reft"):
        return tracker.stage_checkpoint(ref, stage, work)
    return tracker.stage_checkpoint(ref, "finetune", work)


def generate_samples(checkpoint: Path, prompt: str, samples: int = 4, max_new_tokens: int = 200,
                     temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> list[Sample]:
    from wrapperdist.stages import load_model

    model, meta = load_model(checkpoint)
    tokenizer = tokenizer_of(meta)
    ids = [special_id(tokenizer, BOS), *tokenizer.encode(prompt, add_special_tokens=False).ids]
    if len(ids) >= model.shape.seq_len:
        raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is {model.shape.seq_len}")
    outs = sample(model, [ids] * samples, max_new_tokens, special_id(tokenizer, EOS), temperature, top_k, seed)
    texts = [tokenizer.decode(o) for o in outs]
    return [Sample(t, detect_features(t)) for t in texts]
