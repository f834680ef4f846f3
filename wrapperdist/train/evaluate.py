"""Exact-match accuracy of the answer token on a fixed evaluation set."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def answer_accuracy(model: nn.Module, tokens: torch.Tensor, answers: torch.Tensor, batch_size: int = 1024) -> float:
    was_training = model.training
    model.eval()
    # Evaluation sets are built once on the CPU; the model may sit on a GPU (Ray Train's
    # prepare_model, or Runtime.device), so each chunk goes where the model is.
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(tokens), batch_size):
        logits = model(tokens[i : i + batch_size].to(device), last_only=True)
        correct += (logits.argmax(-1) == answers[i : i + batch_size].to(device)).sum().item()
    model.train(was_training)
    return correct / max(1, len(tokens))
