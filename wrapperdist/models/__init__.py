"""Models with named hook points (capture activations, mask units), and loading them back from a
checkpoint by the architecture name it records."""

from __future__ import annotations

from pathlib import Path

import torch

from wrapperdist.models.gpt import GPT, GPTShape
from wrapperdist.models.hooks import HookedModule, HookPoint
from wrapperdist.models.tracr_model import TracrShape, TracrTransformer
from wrapperdist.train.checkpoint import load_checkpoint

ARCHITECTURES: dict[str, tuple[type[HookedModule], type]] = {
    GPT.arch: (GPT, GPTShape),
    TracrTransformer.arch: (TracrTransformer, TracrShape),
}


def model_meta(model: HookedModule) -> dict:
    """What a checkpoint needs to rebuild `model`'s architecture."""
    return {"arch": model.arch, "shape": model.shape.to_dict()}


def load_model(path: str | Path) -> tuple[HookedModule, dict]:
    """The model saved at `path` (weights loaded safely) and the checkpoint's metadata."""
    state, meta = load_checkpoint(path)
    model_cls, shape_cls = ARCHITECTURES[meta.get("arch", "gpt")]
    model = model_cls(shape_cls(**meta["shape"]))
    model.load_state_dict(state)
    return model, meta


def random_like(model: HookedModule, seed: int) -> HookedModule:
    """A freshly initialised model of the same architecture (the analyses' random-init control).
    Saved buffers (the Tracr read-out) are kept: they are part of the architecture, not learned."""
    torch.manual_seed(seed)
    fresh = type(model)(model.shape)
    saved = set(fresh.state_dict())
    fresh.load_state_dict({n: b for n, b in model.named_buffers() if n in saved}, strict=False)
    return fresh


__all__ = ["ARCHITECTURES", "GPT", "GPTShape", "HookPoint", "HookedModule", "TracrShape", "TracrTransformer",
           "load_model", "model_meta", "random_like"]
