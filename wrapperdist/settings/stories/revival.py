"""reFT as the paper's Tab. 1 reports it: the generation score at 0, 1 %, 10 % and 100 % of the reFT
budget (its 0 / 30 / 300 / 3000 iterations), with the held-out losses at the same points (Fig. 11
right). Generations are the expensive part of an evaluation, so the loop's evaluation calls between
those points are skipped."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from wrapperdist.config import ExperimentConfig
from wrapperdist.models import HookedModule
from wrapperdist.setting import Runtime, Setting
from wrapperdist.sink import MemorySink, Sink, TeeSink
from wrapperdist.stages import run_reft

Curves = dict[str, list[tuple[int, float]]]  # metric -> [(reFT step, value)]
PAPER_POINTS = (0, 30, 300, 3000)


def reft_points(steps: int) -> list[int]:
    """0 and 1 %, 10 %, 100 % of `steps` (the paper's 0 / 30 / 300 / 3000 at its 3000 steps)."""
    return sorted({0, *(p for p in (steps // 100, steps // 10, steps) if p > 0)})


class AtSteps:
    """An evaluator that only evaluates at `points`. The training loop calls it before the first step
    and after every `every` steps (its documented schedule), so the n-th call is step n·every; the
    other calls return nothing, which the loop logs as no metrics."""

    def __init__(self, evaluate: Callable[[nn.Module], dict[str, float]], points: list[int], every: int):
        self.evaluate, self.points, self.every, self.calls = evaluate, set(points), every, 0

    def __call__(self, model: nn.Module) -> dict[str, float]:
        step = self.calls * self.every
        self.calls += 1
        return self.evaluate(model) if step in self.points else {}


def reft_at_points(setting: Setting, cfg: ExperimentConfig, model: HookedModule, lr: float, sink: Sink,
                   runtime: Runtime, evaluate: Callable[[nn.Module], dict[str, float]], desc: str) -> Curves:
    """reFT `model` in place for analysis.reft.steps; every evaluated metric at `reft_points`."""
    steps = cfg.analysis.reft.steps
    points = reft_points(steps)
    every = math.gcd(*points)  # steps is a point, so it is a multiple of `every`: no extra final call
    gated = cfg.model_copy(update={"analysis": cfg.analysis.model_copy(
        update={"reft": cfg.analysis.reft.model_copy(update={"eval_every": every})})})
    memory = MemorySink()
    run_reft(setting, gated, model, lr, TeeSink(sink, memory), runtime, evaluate=AtSteps(evaluate, points, every),
             desc=desc)
    keys = {k for _, m in memory.metrics for k in m if k not in ("train_loss", "lr")}
    return {k: memory.history(k) for k in sorted(keys)}
