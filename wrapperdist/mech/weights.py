"""Where did fine-tuning change the weights? Per-matrix relative change ‖W_ft − W_pt‖ / ‖W_pt‖ and
the MLP units whose weights moved most. For a compiled (Tracr) model the pretrained weights are the
program itself, so this reads directly as "which part of the program did fine-tuning edit"."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def relative_change(before: nn.Module, after: nn.Module, eps: float = 1e-8) -> dict[str, float]:
    """{parameter name: ‖after − before‖_F / max(‖before‖_F, eps)} over matching parameters.
    A parameter that was all zeros (an unused Tracr slot) reports the absolute change instead."""
    old = dict(before.named_parameters())
    out = {}
    for name, new in after.named_parameters():
        delta = (new - old[name]).norm().item()
        base = old[name].norm().item()
        out[name] = delta / base if base > eps else delta
    return out


@torch.no_grad()
def mlp_unit_change(before: nn.Module, after: nn.Module) -> list[tuple[int, int, float]]:
    """(layer, unit, ‖Δ incoming row‖ + ‖Δ outgoing column‖) for every MLP unit, largest first."""
    units = []
    for layer, (b, a) in enumerate(zip(before.blocks, after.blocks, strict=True)):  # type: ignore[attr-defined]
        incoming = (a.mlp.fc.weight - b.mlp.fc.weight).norm(dim=1) + (a.mlp.fc.bias - b.mlp.fc.bias).abs()
        outgoing = (a.mlp.out.weight - b.mlp.out.weight).norm(dim=0)
        units += [(layer, i, float(v)) for i, v in enumerate((incoming + outgoing).tolist())]
    return sorted(units, key=lambda u: -u[2])
