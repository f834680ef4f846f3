"""Named hook points: identity modules that can record what flows through them and scale it
by a mask. Probing reads activations by name, pruning writes masks by name, and both address the
model the same way (e.g. `blocks.2.mlp.hidden`, `blocks.0.attn.pattern`, `blocks.3.resid_post`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class HookPoint(nn.Module):
    """Passes its input through. When `record` is on it keeps the tensor in `cache`; when a mask is
    set, the last dimension is multiplied by it (a 0 removes that unit's contribution exactly)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""  # set by the owning model once the module tree is built
        self.cache: dict[str, torch.Tensor] | None = None
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            x = x * self.mask
        if self.cache is not None:
            self.cache[self.name] = x
        return x

    @property
    def active(self) -> bool:
        return self.cache is not None


class HookedModule(nn.Module):
    """Mixin for models built from HookPoints: names them and offers capture/mask by name."""

    def name_hook_points(self) -> None:
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name

    def hook_points(self) -> dict[str, HookPoint]:
        return {m.name: m for m in self.modules() if isinstance(m, HookPoint)}

    @contextmanager
    def capture(self, names: Iterable[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Record the named activations (all hook points if `names` is None) for forwards run
        inside the block. Tensors keep their autograd graph, so gradients can flow through them."""
        points = self.hook_points()
        wanted = list(points) if names is None else list(names)
        unknown = sorted(set(wanted) - set(points))
        if unknown:
            raise KeyError(f"unknown hook points {unknown}; known: {sorted(points)}")
        cache: dict[str, torch.Tensor] = {}
        for name in wanted:
            points[name].cache = cache
        try:
            yield cache
        finally:
            for name in wanted:
                points[name].cache = None

    def set_mask(self, name: str, mask: torch.Tensor | None) -> None:
        """Scale the last dimension of hook point `name` by `mask` (None removes the mask)."""
        points = self.hook_points()
        if name not in points:
            raise KeyError(f"unknown hook point {name!r}; known: {sorted(points)}")
        points[name].mask = mask

    def clear_masks(self) -> None:
        for point in self.hook_points().values():
            point.mask = None
