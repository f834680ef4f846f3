"""The training loop: plain PyTorch. It knows nothing of Ray or MLflow; it reports through a sink
and evaluates through a callback, so every executor (in-process, Ray Train worker) runs this code."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from wrapperdist.config import OptimConfig
from wrapperdist.sink import Sink
from wrapperdist.train.checkpoint import save_checkpoint
from wrapperdist.train.schedule import warmup_cosine

Evaluator = Callable[[nn.Module], dict[str, float]]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum) with weight decay on every tensor of 2 or more dimensions, as in
    nanoGPT: the weight matrices and the token and position embeddings; biases and LayerNorm gains
    are not decayed (pulling them toward zero only hurts)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


@dataclass
class TrainResult:
    final_metrics: dict[str, float]
    checkpoint: Path | None


def loss_on_batch(model: nn.Module, tokens: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the answer token, predicted at the last position."""
    return F.cross_entropy(model(tokens, last_only=True), answers)


def next_token_loss(model: nn.Module, tokens: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Next-token prediction over the whole sequence: every position predicts the token after it,
    the last one the answer (the paper's pretraining objective, App. C.2)."""
    logits = model(tokens)
    targets = torch.cat([tokens[:, 1:], answers[:, None]], dim=1)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def train(
    model: nn.Module,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    cfg: OptimConfig,
    sink: Sink,
    evaluate: Evaluator | None = None,
    checkpoint_path: Path | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
    is_main: bool = True,
    desc: str = "train",
    progress: bool = True,
    loss_fn: LossFn = loss_on_batch,
) -> TrainResult:
    """Run `cfg.steps` optimisation steps. Evaluation runs before the first step (the starting
    point of every curve), every `cfg.eval_every` steps and after the last one. `loss_fn` turns a
    batch into the loss: the answer at the last position by default, next-token LM loss for stories."""
    optimizer = make_optimizer(model, cfg)
    device = next(model.parameters()).device
    # Unwrap DDP (or similar) for evaluation and checkpointing: they need the plain module.
    plain = getattr(model, "module", model)
    metrics: dict[str, float] = {}

    def run_eval(step: int) -> None:
        nonlocal metrics
        if evaluate is not None and is_main:
            metrics = evaluate(plain)
            sink.log_metrics(metrics, step)

    def write_checkpoint(step: int) -> None:
        if checkpoint_path is not None and is_main:
            save_checkpoint(checkpoint_path, plain, {**(checkpoint_meta or {}), "step": step})

    run_eval(0)
    model.train()
    bar = tqdm(range(cfg.steps), desc=desc, disable=not (progress and is_main), mininterval=1.0)
    for step in bar:
        lr = warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup_frac, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens, answers = next(batches)
        tokens = torch.from_numpy(tokens).to(device, non_blocking=True)
        answers = torch.from_numpy(answers).to(device, non_blocking=True)
        loss = loss_fn(model, tokens, answers)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        done = step + 1
        if done % cfg.log_every == 0 and is_main:
            sink.log_metrics({"train_loss": loss.item(), "lr": lr}, done)
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
            run_eval(done)
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
            model.train()
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            write_checkpoint(done)
    if not cfg.eval_every:
        run_eval(cfg.steps)
    write_checkpoint(cfg.steps)
    return TrainResult(final_metrics=metrics, checkpoint=checkpoint_path)
