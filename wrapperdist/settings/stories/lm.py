"""Language modelling on stories: the corpus and its splits, the tokenizer, encoded batches, the
next-token loss, sampling, and the evaluation (held-out losses and how often generations have the
feature). Pure over (config, model); no Ray, no MLflow."""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from wrapperdist.models.hooks import HookedModule
from wrapperdist.settings.stories import transforms
from wrapperdist.settings.stories.config import StoriesSection
from wrapperdist.settings.stories.generator import generate
from wrapperdist.settings.stories.loader import LoadStats, read_stories
from wrapperdist.settings.stories.records import StoryRecord, normalize_feature, prompt_text, to_text
from wrapperdist.settings.stories.scoring import clean_record, feature_score, has_marker
from wrapperdist.settings.stories.tokenizer import BOS, EOS, PAD, special_id, train_tokenizer

IGNORE = -100  # target of padding positions: no loss


@dataclass(frozen=True)
class StoryCorpus:
    pretrain: tuple[StoryRecord, ...]
    finetune: tuple[StoryRecord, ...]  # the pool deletion fine-tuning and reFT draw from
    eval: tuple[StoryRecord, ...]


def _key(s: StoriesSection) -> str:
    return json.dumps(s.model_dump(mode="json", include={"path", "format", "stories", "corpus_seed",
                                                         "pretrain_share", "eval_stories", "vocab_size"}))


@lru_cache(maxsize=4)
def _corpus(key: str) -> StoryCorpus:
    s = StoriesSection.model_validate(json.loads(key))
    wanted = s.stories + s.eval_stories
    if s.path is None:
        records = list(generate(wanted, s.corpus_seed))
    else:
        stats = LoadStats()
        records = list(islice(read_stories(s.path, s.format, stats), wanted))
        if stats.total_skipped:
            warnings.warn(f"{s.path}: {stats.total_skipped} malformed records skipped: {dict(stats.skipped)}",
                          stacklevel=2)
        if len(records) <= s.eval_stories:
            raise ValueError(f"{s.path}: {len(records)} stories read, fewer than eval_stories + 1")
    held_out, rest = records[-s.eval_stories:], records[:-s.eval_stories]
    cut = int(len(rest) * s.pretrain_share)
    return StoryCorpus(tuple(rest[:cut]), tuple(rest[cut:]), tuple(held_out))


def build_corpus(s: StoriesSection) -> StoryCorpus:
    return _corpus(_key(s))


@lru_cache(maxsize=4)
def _tokenizer(key: str) -> str:
    s = StoriesSection.model_validate(json.loads(key))
    return train_tokenizer((to_text(r) for r in _corpus(key).pretrain), s.vocab_size).to_str()


def build_tokenizer(s: StoriesSection) -> Tokenizer:
    """Trained on the whole pretraining pool (deterministic), so the main model and its 'Not in PT'
    control share one vocabulary; it is saved inside every checkpoint."""
    return Tokenizer.from_str(_tokenizer(_key(s)))


def encode(tokenizer: Tokenizer, texts: list[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, targets) of shape (N, seq_len): `BOS text EOS`, truncated, right-padded; targets are
    the next tokens, IGNORE where there is none."""
    bos, eos, pad = (special_id(tokenizer, t) for t in (BOS, EOS, PAD))
    tokens = np.full((len(texts), seq_len), pad, dtype=np.int64)
    targets = np.full((len(texts), seq_len), IGNORE, dtype=np.int64)
    for row, enc in enumerate(tokenizer.encode_batch(texts, add_special_tokens=False)):
        ids = [bos, *enc.ids, eos][: seq_len + 1]
        tokens[row, : len(ids) - 1] = ids[:-1]
        targets[row, : len(ids) - 1] = ids[1:]
    return tokens, targets


def lm_loss(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the non-padding positions."""
    logits = model(tokens)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def protocol_records(s: StoriesSection, stage: str, corpus: StoryCorpus, seed: int) -> list[StoryRecord]:
    """The records a stage trains on: pretraining (all, or without the feature for the control),
    deletion fine-tuning (the configured protocol) or reFT (only stories with the feature)."""
    if stage == "pretrain":
        name, pool = ("F" if s.pretrain_without_feature else "none"), corpus.pretrain
    else:
        name, pool = (s.deletion if stage == "finetune" else "specialise"), corpus.finetune
    records = list(transforms.apply(transforms.PROTOCOLS[name](s.feature, s.irrelevant_feature), pool, seed))
    if not records:
        raise ValueError(f"the {stage} data is empty after the {name!r} transform (feature {s.feature!r} absent?)")
    return records


def batch_stream(tokens: np.ndarray, targets: np.ndarray, batch_size: int, seed: tuple[int, ...]):
    """Random rows of an encoded pool, forever (sampling with replacement: online, like the PCFG)."""
    rng = np.random.default_rng(list(seed))
    while True:
        rows = rng.integers(0, len(tokens), size=batch_size)
        yield tokens[rows], targets[rows]


@torch.no_grad()
def sample(model: HookedModule, prompts: list[list[int]], max_new_tokens: int, eos_id: int, temperature: float = 1.0,
           top_k: int | None = None, seed: int = 0) -> list[list[int]]:
    """Continue each prompt (token ids) by sampling; stops at EOS or the model's context. Prompts of
    equal length are sampled as one batch (no padding: the GPT has no padding mask)."""
    model.eval()
    context = model.shape.seq_len
    device = next(model.parameters()).device
    # the sampler's generator stays on the CPU, so a seed draws the same stories on any device
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    for length, rows in sorted(by_length.items()):
        x = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
        finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
        for _ in range(min(max_new_tokens, context - length)):
            logits = model(x, last_only=True) / temperature
            if top_k is not None:
                kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=gen).squeeze(1).to(device)
            nxt = nxt.masked_fill(finished, eos_id)
            x = torch.cat([x, nxt[:, None]], dim=1)
            finished |= nxt == eos_id
            if finished.all():
                break
        for row, i in zip(x[:, length:].tolist(), rows, strict=True):
            out[i] = row[: row.index(eos_id)] if eos_id in row else row
    return out


def feature_prompts(s: StoriesSection, corpus: StoryCorpus, with_feature: bool = True) -> list[str]:
    """Instruction prefixes (up to 'Story:') of held-out stories whose Features line asks for the
    feature (or, with_feature=False, does not), `generation_prompts` of them, each cleaned of the
    feature's marker (`scoring.clean_record`): only the Features line may ask for it."""
    feature = normalize_feature(s.feature)
    chosen = [r for r in corpus.eval if r.has(feature) == with_feature][: s.generation_prompts]
    if not chosen:
        raise ValueError(f"no held-out story {'with' if with_feature else 'without'} feature {feature!r}")
    prompts = [prompt_text(clean_record(r, feature)) for r in chosen]
    leaking = [p for p in prompts if has_marker(p, feature)]
    if leaking:  # e.g. a marker in the Features line of a real corpus: the score would be meaningless
        raise ValueError(f"{len(leaking)} prompts still carry the {feature} marker: {leaking[0]!r}")
    return prompts


def generations(model: nn.Module, tokenizer: Tokenizer, prompts: list[str], s: StoriesSection, seed: int) -> list[str]:
    bos, eos = special_id(tokenizer, BOS), special_id(tokenizer, EOS)
    ids = [[bos, *tokenizer.encode(p, add_special_tokens=False).ids] for p in prompts]
    return [tokenizer.decode(out) for out in sample(model, ids, s.max_new_tokens, eos, s.temperature, s.top_k, seed)]


def feature_rate(model: nn.Module, tokenizer: Tokenizer, prompts: list[str], s: StoriesSection, seed: int) -> float:
    """Share of the generations from `prompts` that have the feature outside text copied from the
    prompt (`scoring.feature_score`)."""
    return feature_score(generations(model, tokenizer, prompts, s, seed), prompts, s.feature)


@torch.no_grad()
def mean_loss(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor, batch_size: int = 64) -> float:
    model.eval()
    device = next(model.parameters()).device  # held-out sets are built on the CPU
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        x, y = tokens[i : i + batch_size].to(device), targets[i : i + batch_size].to(device)
        logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE,
                                 reduction="sum").item()
        count += int((y != IGNORE).sum())
    return total / max(count, 1)


def make_story_evaluator(s: StoriesSection, tokenizer: Tokenizer, corpus: StoryCorpus, seed: int = 0):
    """loss_twist / loss_plain: held-out LM loss on stories with / without the feature (the paper's
    Fig. 11 losses); twist_rate: share of generations, prompted with the feature, that have it in
    text not copied from the prompt.
    (Named after the default feature; `feature` sets which.)"""
    feature = normalize_feature(s.feature)
    with_f = [to_text(r) for r in corpus.eval if r.has(feature)]
    without = [to_text(r) for r in corpus.eval if not r.has(feature)]
    sets = {name: tuple(torch.from_numpy(a) for a in encode(tokenizer, texts, s.seq_len))
            for name, texts in (("loss_twist", with_f), ("loss_plain", without)) if texts}
    prompts = feature_prompts(s, corpus)

    def evaluate(model: nn.Module) -> dict[str, float]:
        was_training = model.training
        metrics = {name: mean_loss(model, *pair) for name, pair in sets.items()}
        metrics["twist_rate"] = feature_rate(model, tokenizer, prompts, s, seed)
        model.train(was_training)
        return metrics

    return evaluate
