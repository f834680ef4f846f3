"""Sampling stories from a model of the stories setting (`wrapperdist generate`): the Instruct-format
prompt, continuations, and the feature detector's verdict on each."""

from __future__ import annotations

from tokenizers import Tokenizer

from wrapperdist.models import HookedModule
from wrapperdist.setting import Sample
from wrapperdist.settings.stories.generator import detect_features
from wrapperdist.settings.stories.lm import sample
from wrapperdist.settings.stories.records import normalize_feature
from wrapperdist.settings.stories.tokenizer import BOS, EOS, special_id


def build_prompt(prompt: str, features: list[str] | None = None) -> str:
    """`prompt` as given (escaped newlines '\\n' become newlines); with `features`, the Instruct
    prefix 'Features: …\\nStory:' goes first, so the prompt is the story's opening."""
    text = prompt.replace("\\n", "\n")
    if features:  # "Story:" then the opening with its leading space, as in the training text
        story = " " + text if text else ""
        text = "Features: " + ", ".join(normalize_feature(f) for f in features) + "\nStory:" + story
    return text


def generate_samples(model: HookedModule, tokenizer: Tokenizer, prompt: str, samples: int = 4,
                     max_new_tokens: int = 200, temperature: float = 1.0, top_k: int | None = None,
                     seed: int = 0) -> list[Sample]:
    ids = [special_id(tokenizer, BOS), *tokenizer.encode(prompt, add_special_tokens=False).ids]
    if len(ids) >= model.shape.seq_len:
        raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is {model.shape.seq_len}")
    outs = sample(model, [ids] * samples, max_new_tokens, special_id(tokenizer, EOS), temperature, top_k, seed)
    texts = [tokenizer.decode(o) for o in outs]
    return [Sample(prompt, t, detect_features(t)) for t in texts]
