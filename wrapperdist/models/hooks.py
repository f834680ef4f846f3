"""Named hook points: identity modules that can record what flows through them and scale it
by a mask. Probing reads activations by name, pruning writes masks by name, and both address the
model the same way (e.g. `blocks.2.mlp.hidden`, `blocks.0.attn.pattern`, `blocks.3.resid_post`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

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
    """Base of models built from HookPoints: names them, offers capture/mask by name, and tells the
    analyses where things are, so `mech/` addresses every model the same way.

    The layout it assumes (GPT and the compiled-Tracr model share it): `blocks`, each with an `mlp`
    whose `fc` (d_model -> d_mlp) and `out` (d_mlp -> d_model) are linear layers, and hook points
    `embed`, `blocks.i.attn.pattern`, `blocks.i.attn.heads`, `blocks.i.mlp.hidden`,
    `blocks.i.resid_post`. `arch` names the class in checkpoints; `shape` is its frozen dataclass."""

    arch: str = ""
    blocks: nn.ModuleList
    shape: Any

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def residual_names(self) -> list[str]:
        """The residual stream at every depth: embeddings, then after each block."""
        return ["embed", *(f"blocks.{i}.resid_post" for i in range(self.n_layers))]

    def pattern_names(self) -> list[str]:
        return [f"blocks.{i}.attn.pattern" for i in range(self.n_layers)]

    @staticmethod
    def mlp_hidden_name(layer: int) -> str:
        return f"blocks.{layer}.mlp.hidden"

    def mlp_layers(self, layer: int) -> tuple[nn.Linear, nn.Linear]:
        """(fc, out) of block `layer`'s MLP."""
        mlp = self.blocks[layer].mlp
        return mlp.fc, mlp.out

    def mlp_widths(self) -> list[int]:
        return [self.mlp_layers(i)[0].out_features for i in range(self.n_layers)]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

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
