"""Models with named hook points (capture activations, mask units)."""

from wrapperdist.models.gpt import GPT, GPTShape
from wrapperdist.models.hooks import HookedModule, HookPoint

__all__ = ["GPT", "GPTShape", "HookPoint", "HookedModule"]
