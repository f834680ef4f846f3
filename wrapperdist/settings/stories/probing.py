"""The paper's Twist probe (App. F; Fig. 11 left): per layer, a linear probe for "this story has the
feature" on the mean residual over the story's last LAST_POSITIONS tokens, the instructions
stripped (the model reads `BOS story` only)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from wrapperdist.config import ProbeConfig
from wrapperdist.mech import train_probe
from wrapperdist.models import HookedModule
from wrapperdist.settings.stories.config import StoriesSection
from wrapperdist.settings.stories.lm import build_corpus, encode
from wrapperdist.settings.stories.records import normalize_feature
from wrapperdist.settings.stories.tokenizer import PAD, special_id

LAST_POSITIONS = 10  # the paper's probe reads the mean residual over the story's last 10 tokens


@torch.no_grad()
def story_features(model: HookedModule, tokens: torch.Tensor, pad_id: int,
                   batch_size: int = 64) -> dict[str, torch.Tensor]:
    """{layer: (N, d)} mean residual over each story's last LAST_POSITIONS real tokens."""
    model.eval()
    names = model.residual_names()
    lengths = (tokens != pad_id).sum(1)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(0, len(tokens), batch_size):
        x, n = tokens[i : i + batch_size], lengths[i : i + batch_size]
        positions = torch.arange(x.shape[1])[None, :]
        window = ((positions < n[:, None]) & (positions >= (n[:, None] - LAST_POSITIONS))).float()[..., None]
        with model.capture(names) as cache:
            model(x)
        for name in names:
            out[name].append((cache[name] * window).sum(1) / window.sum(1))
    return {n: torch.cat(v) for n, v in out.items()}


@dataclass(frozen=True)
class ProbeData:
    """Stories (text only) and their labels, split into the probe's train and test parts."""

    tokens: torch.Tensor
    labels: torch.Tensor
    cut: int
    pad_id: int

    @property
    def majority(self) -> float:
        """Test accuracy of predicting the training split's majority class."""
        train_mode = self.labels[: self.cut].mode().values
        return float((self.labels[self.cut :] == train_mode).float().mean())


def probe_data(s: StoriesSection, tokenizer: Tokenizer, probe: ProbeConfig) -> ProbeData:
    corpus = build_corpus(s)
    records = [*corpus.eval, *corpus.finetune][: probe.samples]
    feature = normalize_feature(s.feature)
    labels = torch.tensor([int(r.has(feature)) for r in records])
    tokens = torch.from_numpy(encode(tokenizer, [r.story for r in records], s.seq_len)[0])
    return ProbeData(tokens, labels, int(len(records) * (1 - probe.test_frac)), special_id(tokenizer, PAD))


def probe_model(model: HookedModule, data: ProbeData, probe: ProbeConfig) -> dict[str, float]:
    """{layer: held-out accuracy} of one model's Twist probes."""
    acts = story_features(model, data.tokens, data.pad_id)
    c, y = data.cut, data.labels
    return {layer: train_probe(a[:c], y[:c], a[c:], y[c:], 2, probe.steps, probe.lr).test_acc
            for layer, a in acts.items()}
