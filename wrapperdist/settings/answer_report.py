"""The Markdown report of an answer setting's analysis: the verdict and its thresholds, the pruning,
probe, reFT and attention tables, and each held-out accuracy beside its floors."""

from __future__ import annotations

from wrapperdist.config import ExperimentConfig
from wrapperdist.mech import Evidence, Verdict


def render_report(described: str, cfg: ExperimentConfig, e: Evidence, verdict: Verdict, curves, probes, floors,
                  reft_steps, shift, learned_removed: int | None, answers: dict[str, float],
                  first_pruned: list[str]) -> str:
    v = cfg.analysis.verdict

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    lines = [
        f"# Wrapper analysis: {cfg.name}",
        "",
        f"**Verdict: {verdict.label}** (pruning revives: {yes(verdict.pruning_revives)}, probe decodes: "
        f"{yes(verdict.probe_decodes)}, reFT faster than the control: {yes(verdict.reft_faster)})",
        "",
        f"Fine-tuned at lr {cfg.finetune.optim.lr:g} for {cfg.finetune.optim.steps} steps: {described}. "
        f"Pretraining-task accuracy of the fine-tuned model: {e.pt_acc_finetuned:.3f}.",
        "",
        "## Thresholds",
        f"- pruning: pt_acc gain >= {v.prune_min_gain} with at most {v.prune_max_k} units (paper's grad·weight method)",
        f"- probing: best-layer probe accuracy >= random-init probe + {v.probe_margin}",
        f"- reFT: reach pt_acc {v.reft_threshold} at least {v.reft_speedup}x sooner than the control at the same lr",
        "",
        "## Pruning (accuracy after removing the top-K units: weight rows, or MLP units)",
        "",
        "| K | " + " | ".join(f"{m}: pt / ft" for m in curves) + " |",
        "|---|" + "---|" * len(curves),
    ]
    for i, (k, _) in enumerate(next(iter(curves.values()))):
        cells = [f"{pts[i][1]['pt_acc']:.3f} / {pts[i][1]['ft_acc']:.3f}" for pts in curves.values()]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", f"Paper-method gain within K <= {v.prune_max_k}, K chosen on a separate selection split: "
              f"{e.prune_heldout_gain:+.3f} at K = {e.prune_selected_k} (the verdict's number). Best K read off "
              f"the held-out set itself (optimistic): {e.prune_best_gain:+.3f} at K = {e.prune_best_k}. "
              f"The paper's method removes first: {', '.join(first_pruned)}."
              + (f" The learned mask removed {learned_removed} MLP units." if learned_removed is not None else ""), "",
              "## Probes (held-out accuracy, best layer; per-layer values in probes.png)", "",
              "| model | " + " | ".join(probes) + " |", "|---|" + "---|" * len(probes)]
    for model in next(iter(probes.values())):
        lines.append(f"| {model} | " + " | ".join(f"{max(probes[t][model].values()):.3f}" for t in probes) + " |")
    lines.append("| majority class | " + " | ".join(f"{floors[t]:.3f}" for t in probes) + " |")
    lines += ["", f"## Reverse fine-tuning (steps to pt_acc >= {v.reft_threshold}, budget {e.reft_budget})", ""]
    for label, steps in reft_steps.items():
        lines.append(f"- {label}: {steps if steps is not None else 'not reached'}")
    if verdict.reft_speedup is not None:
        lines.append(f"\nSpeed-up of the fine-tuned model over the control at the same lr: {verdict.reft_speedup:.1f}x")
    lines += ["", "## Attention (pretrained vs fine-tuned, mean total-variation distance of the answer row)", ""]
    for layer, row in enumerate(shift.tolist()):
        lines.append(f"- layer {layer}: " + ", ".join(f"head {h} {x:.2f}" for h, x in enumerate(row)))
    if answers:
        lines += ["", "## What the fine-tuned model does on O_PT prompts (the setting's diagnosis; shares may overlap)",
                  "",
                  *(f"- {k}: {x:.3f}" for k, x in answers.items())]
    lines += ["", "Figures: pruning.png, probes.png, reft.png, attention.png"]
    return "\n".join(lines) + "\n"


def floors_markdown(set_floors: dict[str, float], finetuned: dict[str, float]) -> str:
    """The fine-tuned model's accuracy on each held-out set beside what it must beat."""
    keys = [k.removeprefix("floor.modal.") for k in set_floors if k.startswith("floor.modal.")]

    def cell(kind: str, key: str) -> str:
        value = set_floors.get(f"floor.{kind}.{key}")
        return "-" if value is None else f"{value:.3f}"

    lines = ["", "## Floors (what each accuracy must beat; `floor.*` metrics)", "",
             "| set | fine-tuned | modal answer | random init | planted relation holds on |", "|---|---|---|---|---|"]
    for key in keys:
        ours = f"{finetuned[key]:.3f}" if key in finetuned else "-"
        floors = " | ".join(cell(kind, key) for kind in ("modal", "random_init", "relation"))
        lines.append(f"| {key} | {ours} | {floors} |")
    return "\n".join(lines) + "\n"
