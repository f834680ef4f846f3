"""Linear probes on the residual stream (paper App. D): one linear layer per layer, trained on the
activations at the answer position to predict a task's integer target, held-out accuracy reported.

The schedule follows the paper's probe (AdamW 1e-3, LR ÷10 at 50 %, 75 % and 87.5 % of training:
its 2K / 3K / 3.5K of 4K iterations). Two ways to feed it:

* `probe_layers`: a fixed pool of examples, full-batch (the CPU scale: one forward pass per model);
* `probe_layers_fresh`: the paper's, a fresh batch from the generator at every step, all layers'
  probes trained together on the activations of one forward pass; a fixed held-out set scores them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wrapperdist.models.hooks import HookedModule


@torch.no_grad()
def answer_activations(model: HookedModule, tokens: torch.Tensor, names: list[str], batch_size: int = 1024):
    """{name: (N, d)} activations at the last (answer) position."""
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(0, len(tokens), batch_size):
        with model.capture(names) as cache:
            model(tokens[i : i + batch_size], last_only=True)
        for n in names:
            chunks[n].append(cache[n][:, -1].detach())
    return {n: torch.cat(c) for n, c in chunks.items()}


@dataclass
class ProbeResult:
    train_acc: float
    test_acc: float


def train_probe(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
    n_classes: int, steps: int = 1000, lr: float = 1e-3, seed: int = 0,
) -> ProbeResult:
    """Fit a linear classifier (features standardised with training statistics) and score it."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    gen = torch.Generator().manual_seed(seed)
    probe = torch.nn.Linear(x_train.shape[1], n_classes)
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=gen)
        probe.bias.zero_()
    opt, sched = _schedule(probe.parameters(), steps, lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(probe(x_train), y_train)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        train_acc = (probe(x_train).argmax(-1) == y_train).float().mean().item()
        test_acc = (probe(x_test).argmax(-1) == y_test).float().mean().item()
    return ProbeResult(train_acc, test_acc)


def probe_layers(
    model: HookedModule, tokens: torch.Tensor, targets: torch.Tensor, n_classes: int,
    test_frac: float = 0.25, steps: int = 1000, lr: float = 1e-3,
) -> dict[str, ProbeResult]:
    """Probe every residual layer for `targets` (one int per example); held-out split by position."""
    names = model.residual_names()
    acts = answer_activations(model, tokens, names)
    cut = int(len(tokens) * (1 - test_frac))
    return {
        n: train_probe(a[:cut], targets[:cut], a[cut:], targets[cut:], n_classes, steps, lr)
        for n, a in acts.items()
    }


def _schedule(params, steps: int, lr: float):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    milestones = [int(steps * f) for f in (0.5, 0.75, 0.875)]
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)


def probe_layers_fresh(
    model: HookedModule, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], test_tokens: torch.Tensor,
    test_targets: torch.Tensor, n_classes: int, steps: int = 4000, lr: float = 1e-3, seed: int = 0,
) -> dict[str, ProbeResult]:
    """Probe every residual layer on fresh data: `batches` yields (tokens, targets), a new draw per
    step, so no example is seen twice and the probe cannot fit noise in a fixed pool. Features are
    standardised with the first batch's statistics (fixed afterwards, so the probe's input does not
    drift). `train_acc` is on the last batch (itself unseen until that step)."""
    names = model.residual_names()
    tokens, targets = next(batches)
    first = answer_activations(model, tokens, names)
    stats = {n: (a.mean(0), a.std(0) + 1e-6) for n, a in first.items()}
    gen = torch.Generator().manual_seed(seed)
    probes = {}
    for n, a in first.items():
        probes[n] = torch.nn.Linear(a.shape[1], n_classes)
        with torch.no_grad():
            probes[n].weight.normal_(0, 0.01, generator=gen)
            probes[n].bias.zero_()
    opt, sched = _schedule([p for probe in probes.values() for p in probe.parameters()], steps, lr)
    acts = first
    with torch.enable_grad():
        for step in range(steps):
            if step:
                tokens, targets = next(batches)
                acts = answer_activations(model, tokens, names)
            # the probes share no parameters: the summed loss gives each its own gradient
            loss = sum(F.cross_entropy(probes[n]((acts[n] - m) / s), targets) for n, (m, s) in stats.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    test = answer_activations(model, test_tokens, names)
    out = {}
    with torch.no_grad():
        for n, (m, s) in stats.items():
            train_acc = (probes[n]((acts[n] - m) / s).argmax(-1) == targets).float().mean().item()
            test_acc = (probes[n]((test[n] - m) / s).argmax(-1) == test_targets).float().mean().item()
            out[n] = ProbeResult(train_acc, test_acc)
    return out


def majority_baseline(targets: torch.Tensor, test_frac: float = 0.25) -> float:
    """Accuracy of always predicting the training split's most common class (the chance floor)."""
    cut = int(len(targets) * (1 - test_frac))
    mode = torch.mode(targets[:cut]).values
    return (targets[cut:] == mode).float().mean().item()
