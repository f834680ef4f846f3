"""The Markdown report of one stories analysis: the generation scores, the paper's Tab. 1 row for this
deletion beside the Not-in-PT row, and the per-layer probes against Present in PT and Not in PT."""

from __future__ import annotations

from typing import Any

from wrapperdist.config import ExperimentConfig
from wrapperdist.settings.stories.config import StoriesSection
from wrapperdist.settings.stories.revival import PAPER_POINTS, Curves, reft_points


def _row(label: str, curve: list[tuple[int, float]]) -> str:
    return f"| {label} | " + " | ".join(f"{x:.2f}" for _, x in curve) + " |"


def render(cfg: ExperimentConfig, s: StoriesSection, e: Any, v: Any, rates: dict[str, dict[str, float]],
           curves: dict[str, Curves], probes: dict[str, dict[str, float]], majority: float) -> str:
    never = "not reached"
    layers = list(next(iter(probes.values())))
    points = reft_points(cfg.analysis.reft.steps)
    paper = " / ".join(str(p) for p in PAPER_POINTS[: len(points)])
    lines = [
        f"# Deletion analysis: {cfg.name}", "",
        f"**Verdict: {v.label}** (deleted: {v.deleted}, probe above Not in PT: {v.probe_decodes}, reFT faster "
        f"than Not in PT: {v.reft_faster})", "",
        f"Deletion of {s.feature!r} by {s.deletion} at lr {cfg.finetune.optim.lr:g} for "
        f"{cfg.finetune.optim.steps} steps; corpus: {s.path or 'generated'} ({s.stories} stories).", "",
        "## Generations prompted for the feature (share that have it, copy-free) and held-out losses", "",
        "| model | feature rate | loss on stories with it | loss on stories without |", "|---|---|---|---|",
        *(f"| {name} | {m.get('twist_rate', float('nan')):.3f} | {m.get('loss_twist', float('nan')):.3f} | "
          f"{m.get('loss_plain', float('nan')):.3f} |" for name, m in rates.items()),
        "", f"Prompts that do not ask for it (Present in PT): {e.rate_unasked_pretrained:.3f}.", "",
        f"## Tab. 1 analogue: share with {s.feature} during reFT (steps {' / '.join(map(str, points))}; the "
        f"paper's {paper})", "",
        "| model | " + " | ".join(map(str, points)) + " |", "|---|" + "---|" * len(points),
        *(_row(name, c["twist_rate"]) for name, c in curves.items()), "",
        f"Steps to {cfg.analysis.verdict.reft_threshold:.0%} of the Present-in-PT rate: deleted "
        f"{e.reft_steps_finetuned if e.reft_steps_finetuned is not None else never}, Not in PT "
        f"{e.reft_steps_control if e.reft_steps_control is not None else never}.", "",
        "Loss on stories with the feature during reFT (Fig. 11 right):", "",
        "| model | " + " | ".join(map(str, points)) + " |", "|---|" + "---|" * len(points),
        *(_row(name, c["loss_twist"]) for name, c in curves.items() if "loss_twist" in c), "",
        "## Linear probe for the feature (held-out accuracy per layer; story text only, last 10 tokens)", "",
        "| model | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers),
        *(f"| {name} | " + " | ".join(f"{x:.3f}" for x in per.values()) + " |" for name, per in probes.items()),
        "", f"Majority class: {majority:.3f}.", "",
    ]
    return "\n".join(lines)
