"""Linear probes on the residual stream (paper App. D): one linear layer per layer, trained on the
activations at the answer position to predict a task's integer target, held-out accuracy reported.

The schedule follows the paper's probe (AdamW 1e-3, LR ÷10 at 50 %, 75 % and 87.5 % of training:
its 2K / 3K / 3.5K of 4K iterations); full-batch, because the activations fit in memory."""

from __future__ import annotations

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
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    milestones = [int(steps * f) for f in (0.5, 0.75, 0.875)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
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


def majority_baseline(targets: torch.Tensor, test_frac: float = 0.25) -> float:
    """Accuracy of always predicting the training split's most common class (the chance floor)."""
    cut = int(len(targets) * (1 - test_frac))
    mode = torch.mode(targets[:cut]).values
    return (targets[cut:] == mode).float().mean().item()
