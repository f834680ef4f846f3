"""Where did fine-tuning change the weights? Per-matrix relative change ‖W_ft − W_pt‖ / ‖W_pt‖ and
the MLP units whose weights moved most. For a compiled (Tracr) model the pretrained weights are the
program itself, so this reads directly as "which part of the program did fine-tuning edit"."""

from __future__ import annotations

import torch
from torch import nn

from wrapperdist.models.hooks import HookedModule


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
def mlp_unit_change(before: HookedModule, after: HookedModule) -> list[tuple[int, int, float]]:
    """(layer, unit, ‖Δ incoming row‖ + ‖Δ outgoing column‖) for every MLP unit, largest first."""
    units = []
    for layer in range(after.n_layers):
        (fc_b, out_b), (fc_a, out_a) = before.mlp_layers(layer), after.mlp_layers(layer)
        incoming = (fc_a.weight - fc_b.weight).norm(dim=1) + (fc_a.bias - fc_b.bias).abs()
        outgoing = (out_a.weight - out_b.weight).norm(dim=0)
        units += [(layer, i, float(v)) for i, v in enumerate((incoming + outgoing).tolist())]
    return sorted(units, key=lambda u: -u[2])


def weight_change_markdown(changes: dict[str, float], top_units: list[tuple[int, int, float]]) -> str:
    """The report section: the tensors that changed most, and the MLP units that moved most."""
    ranked = sorted(changes.items(), key=lambda kv: -kv[1])
    lines = ["", "## Where fine-tuning changed the weights (relative Frobenius change; figure weights.png)", "",
             "| parameter | change |", "|---|---|", *(f"| {n} | {x:.4f} |" for n, x in ranked[:10]), "",
             "MLP units that moved most (layer, unit: ‖Δ in‖ + ‖Δ out‖): "
             + ", ".join(f"{layer}.{unit}: {x:.3f}" for layer, unit, x in top_units), ""]
    return "\n".join(lines)
