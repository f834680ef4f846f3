"""The wrapper verdict: the three lines of evidence, each against an explicit threshold.

* pruning: removing at most `prune_max_k` units (the paper's one-step grad·weight method) raises
  pretraining-task accuracy by at least `prune_min_gain`, with K chosen on a selection split and the
  gain measured on the held-out set (so the gain is not the maximum of noise);
* probing: the pretraining target is still linearly decodable from the fine-tuned model, at least
  `probe_margin` above the same probe on a randomly initialised model;
* reFT: the fine-tuned model reaches `reft_threshold` pretraining accuracy at least `reft_speedup`
  times sooner than the Scr.+FT control (never had the capability) at the same learning rate.

"wrapper" needs reFT revival plus one of the mechanistic signs; "capability changed" means none of
the three holds; anything else is "mixed" — the report says which signs disagree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Evidence:
    pt_acc_finetuned: float
    prune_best_gain: float  # max over k <= prune_max_k of pt_acc(pruned) - pt_acc(unpruned): K picked on the scored set
    prune_best_k: int
    prune_heldout_gain: float  # pt_acc gain on the held-out set at the K that was best on the selection split
    prune_selected_k: int
    probe_finetuned: float  # best-layer held-out accuracy on the pretraining target
    probe_random_init: float
    probe_pretrained: float
    reft_steps_finetuned: int | None
    reft_steps_control: int | None  # Scr.+FT, same LR
    reft_budget: int


@dataclass
class Verdict:
    label: str
    pruning_revives: bool
    probe_decodes: bool
    reft_faster: bool
    reft_speedup: float | None  # control steps / fine-tuned steps (budget+1 stands in for "never")


def judge(e: Evidence, prune_min_gain: float, probe_margin: float, reft_speedup: float) -> Verdict:
    pruning = e.prune_heldout_gain >= prune_min_gain
    probe = e.probe_finetuned - e.probe_random_init >= probe_margin
    never = e.reft_budget + 1  # a run that never reaches the threshold counts as one step past the budget
    ft_steps = e.reft_steps_finetuned if e.reft_steps_finetuned is not None else never
    ctrl_steps = e.reft_steps_control if e.reft_steps_control is not None else never
    speedup = ctrl_steps / max(ft_steps, 1) if e.reft_steps_finetuned is not None else None
    reft = speedup is not None and speedup >= reft_speedup
    if reft and (pruning or probe):
        label = "wrapper"
    elif not (reft or pruning or probe):
        label = "capability changed"
    else:
        label = "mixed"
    return Verdict(label, pruning, probe, reft, speedup)
