"""The analysis of a fine-tune in a setting whose examples are (tokens, answer): pruning, probing,
attention maps and reFT against the setting's control, the wrapper verdict, and a Markdown report.
Pure over (config, models); reports through a sink. The setting supplies data through its tasks."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from matplotlib.figure import Figure

from wrapperdist.config import ExperimentConfig
from wrapperdist.mech import (
    CurvePoint,
    Evidence,
    Verdict,
    attention_patterns,
    grad_x_weight_scores,
    held_out_gain,
    judge,
    learned_removal_mask,
    majority_baseline,
    mlp_unit_change,
    pattern_shift,
    probe_layers,
    probe_layers_fresh,
    random_row_ranking,
    random_weight_ranking,
    rank_rows,
    rank_units,
    relative_change,
    removal_curve,
    row_scores,
    rows_removed,
    steps_to_reach,
    weight_change_markdown,
    weight_label,
    weight_scores,
    weights_removed,
)
from wrapperdist.models import HookedModule, random_like
from wrapperdist.plots import attention_figure, probe_figure, pruning_figure, reft_figure, weight_change_figure
from wrapperdist.setting import AnalysisModels, Evaluator, Runtime
from wrapperdist.settings.answer_data import AnswerSettingLike, AnswerTasks
from wrapperdist.settings.answer_reft import REFT_KEYS, reft_curves
from wrapperdist.settings.answer_report import floors_markdown, render_report
from wrapperdist.settings.floors import answer_floors, random_init_seed
from wrapperdist.sink import Sink
from wrapperdist.train import answer_accuracy

ANALYSIS_SEED = 7_000_001  # data for scores, masks and probes: disjoint from training and eval streams
SELECT_SEED = 7_000_031  # the pruning's selection split (chooses K): disjoint from the above and the eval seed
FRESH_PROBE_SEED = 7_000_041  # fresh probe batches (+1 for the O_FT target): disjoint from every seed above
SELECT_KEY = "pt_acc_select"  # O_PT accuracy on the selection split, in the paper curve's metrics


@dataclass
class AnalysisOutput:
    evidence: Evidence
    verdict: Verdict
    report: str
    figures: dict[str, Figure] = field(default_factory=dict)
    reft_final_pt_acc: dict[str, float] = field(default_factory=dict)  # model -> pt_acc at the end of reFT

    @property
    def label(self) -> str:
        return self.verdict.label

    def summary_metrics(self) -> dict[str, float]:
        """One number per line of evidence, logged on the analysis run so the MLflow compare view and
        parallel-coordinates plot can set them against the grid's parameters. Every key is always
        present (a run missing a metric drops out of those plots): "never reached" is 0 in
        `reft_reached_*`, and the reFT end accuracy carries the revival even then."""
        e, v = self.evidence, self.verdict
        metrics = {f"evidence.{k}": float(x) for k, x in asdict(e).items() if x is not None}
        metrics |= {
            "evidence.reft_reached_finetuned": float(e.reft_steps_finetuned is not None),
            "evidence.reft_reached_control": float(e.reft_steps_control is not None),
            "evidence.probe_gap": e.probe_finetuned - e.probe_random_init,
            **{f"evidence.reft_final_pt_acc_{k}": x for k, x in self.reft_final_pt_acc.items()},
            "verdict_wrapper": float(v.label == "wrapper"),
            "verdict_capability_changed": float(v.label == "capability changed"),
            "verdict_pruning_revives": float(v.pruning_revives),
            "verdict_probe_decodes": float(v.probe_decodes),
            "verdict_reft_faster": float(v.reft_faster),
        }
        if v.reft_speedup is not None:
            metrics["verdict_reft_speedup"] = v.reft_speedup
        return metrics


def _as_tensors(batch) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(batch[0]), torch.from_numpy(batch[1])


PAPER_PRUNING = "paper's unit, grad x weight (Alg. 3)"
# The paper's pruning unit per setting (App. D): rows of weight matrices for the PCFG models, single
# weights for the compiled ones — (scores, random ranking, remover).
PRUNING_UNITS = {
    "rows": (row_scores, random_row_ranking, rows_removed),
    "weights": (weight_scores, random_weight_ranking, weights_removed),
}


def _pruning(setting: AnswerSettingLike, cfg: ExperimentConfig, tasks: AnswerTasks, model: HookedModule,
             evaluate: Evaluator, sink: Sink):
    """Removal curves: the paper's unit (rows, or single weights) by one-step grad x weight, random
    units of that kind, and on MLP units the same score and a learned mask (named alternatives)."""
    p = cfg.analysis.prune
    rng = np.random.default_rng(ANALYSIS_SEED)
    tokens, answers = _as_tensors(tasks.batch("capability", p.score_samples, rng))
    score, random_ranking_of, remove = PRUNING_UNITS[setting.pruning_unit]
    ranking = rank_rows(score(model, tokens, answers, p.scope))
    # K is chosen on a selection split drawn like the held-out C_Te = 0 set from another seed, and the
    # gain is reported on the held-out set (`held_out_gain`)
    select_tokens, select_answers = _as_tensors(tasks.eval_sets(cfg.eval.samples, np.random.default_rng(SELECT_SEED))
                                                ["pt_acc"])

    def evaluate_and_select(m: torch.nn.Module) -> dict[str, float]:
        return {**evaluate(m), SELECT_KEY: answer_accuracy(m, select_tokens, select_answers)}

    rows = removal_curve(model, ranking, p.ks, evaluate_and_select, remove)
    top = Counter(name for name, _ in ranking[: cfg.analysis.verdict.prune_max_k])
    sink.log_metrics({f"prune.paper.from.{name}": float(n) for name, n in top.items()}, 0)
    first = [weight_label(model, w) if setting.pruning_unit == "weights" else f"{w[0]} row {w[1]}"
             for w in ranking[:5]]
    random_rows = [removal_curve(model, random_ranking_of(model, seed, p.scope), p.ks, evaluate, remove)
                   for seed in range(p.random_controls)]
    # the other unit of Alg. 3 as a named alternative: rows of the compiled models (single weights
    # are the paper's unit there), so both settings can be compared on the PCFG's unit
    other_rows = (removal_curve(model, rank_rows(row_scores(model, tokens, answers, p.scope)), p.ks, evaluate,
                                rows_removed) if setting.pruning_unit != "rows" else None)
    units, learned, learned_curve = [], None, []
    if p.mlp_units:
        units = removal_curve(model, rank_units(grad_x_weight_scores(model, tokens, answers)), p.ks, evaluate)
        batches = (_as_tensors(b) for b in setting.batches(cfg, "reft", p.learned_batch_size, stream_id=1))
        learned = learned_removal_mask(model, batches, p.learned_steps, p.learned_lr, p.learned_penalty)
        learned_curve = removal_curve(model, learned.ranking, p.ks, evaluate)
    named = {  # metric key -> (legend label, curve); an empty curve (a method not run) is left out
        "paper": (PAPER_PRUNING, [(c.k, c.metrics) for c in rows]),
        "random": (f"random {setting.pruning_unit} (control)", _mean_curve(random_rows)),
        "rows": ("weight rows, grad x weight", [(c.k, c.metrics) for c in other_rows or []]),
        "units": ("MLP units, grad x weight", [(c.k, c.metrics) for c in units]),
        "learned": ("MLP units, learned mask", [(c.k, c.metrics) for c in learned_curve]),
    }
    curves = {method: curve for method, curve in named.values() if curve}
    max_k = cfg.analysis.verdict.prune_max_k
    for key, (_, curve) in named.items():
        for k, metrics in curve:
            sink.log_metrics({f"prune.{key}.{m}": v for m, v in metrics.items()}, k)
        if curve:  # one number per method for the compare view: the best revival within the verdict's K
            gain = max(m["pt_acc"] for k, m in curve if k <= max_k) - curve[0][1]["pt_acc"]
            sink.log_metrics({f"prune.{key}.best_gain": gain}, 0)
    if learned:
        sink.log_metrics({"prune.learned.units_removed": float(len(learned.removed))}, 0)
    return curves, learned, first


def _mean_curve(curves: list[list]) -> list[tuple[int, dict[str, float]]]:
    return [(pt.k, {key: float(np.mean([c[i].metrics[key] for c in curves])) for key in pt.metrics})
            for i, pt in enumerate(curves[0])]


def _probing(cfg: ExperimentConfig, tasks: AnswerTasks, models: dict[str, HookedModule], sink: Sink):
    pr = cfg.analysis.probe
    rng = np.random.default_rng(ANALYSIS_SEED + 1)
    n_classes = tasks.answer_classes()
    results: dict[str, dict[str, dict[str, float]]] = {}
    floors: dict[str, float] = {}
    for target_name, which in (("pretraining target (count O_PT)", "capability"),
                               ("fine-tuning target (count O_FT)", "target")):
        tokens, answers = _as_tensors(tasks.batch(which, pr.samples, rng))  # type: ignore[arg-type]
        targets = tasks.answer_class(answers)
        floors[target_name] = majority_baseline(targets, pr.test_frac)
        results[target_name] = {}
        key = "pt" if which == "capability" else "ft"
        held_out = int(len(tokens) * (1 - pr.test_frac))  # fresh probes: the pool's held-out tail scores them
        for model_name, model in models.items():
            if pr.fresh_batch_size:  # the same fresh stream for every model (its own seed per target)
                fresh = _fresh_batches(tasks, which, pr.fresh_batch_size, FRESH_PROBE_SEED + (key == "ft"))
                per_layer = probe_layers_fresh(model, fresh, tokens[held_out:], targets[held_out:], n_classes,
                                               pr.steps, pr.lr)
            else:
                per_layer = probe_layers(model, tokens, targets, n_classes, pr.test_frac, pr.steps, pr.lr)
            results[target_name][model_name] = {layer: r.test_acc for layer, r in per_layer.items()}
            for depth, r in enumerate(per_layer.values()):
                sink.log_metrics({f"probe.{key}.{model_name.split()[0]}": r.test_acc}, depth)
    return results, floors


def _fresh_batches(tasks: AnswerTasks, which: str, batch_size: int, seed: int):
    """An endless stream of (tokens, answer class) batches, each drawn afresh from the generator."""
    rng = np.random.default_rng(seed)
    while True:
        tokens, answers = _as_tensors(tasks.batch(which, batch_size, rng))  # type: ignore[arg-type]
        yield tokens, tasks.answer_class(answers)


def _attention(cfg: ExperimentConfig, tasks: AnswerTasks, models: AnalysisModels, sink: Sink):
    rng = np.random.default_rng(ANALYSIS_SEED + 2)
    prompts = torch.from_numpy(tasks.batch("capability", cfg.analysis.attention_prompts, rng)[0])
    before, after = attention_patterns(models.pretrained, prompts), attention_patterns(models.finetuned, prompts)
    shift = pattern_shift(before, after)
    for layer, row in enumerate(shift.tolist()):
        sink.log_metrics({f"attention.shift.h{h}": x for h, x in enumerate(row)}, layer)
    labels = [tasks.decode(int(t)) for t in prompts[0]]
    figure = attention_figure(before[:, 0].numpy(), after[:, 0].numpy(), labels,
                              f"attention, pretrained vs fine-tuned ({cfg.name})")
    return shift, figure


def analyze_answers(setting: AnswerSettingLike, cfg: ExperimentConfig, models: AnalysisModels, sink: Sink,
                    runtime: Runtime) -> AnalysisOutput:
    """Run all four analyses on the fine-tuned model (pretrained = its starting point, control = the
    setting's control (Scr.+FT by default))."""
    runtime.apply()
    tasks = setting.tasks(cfg)
    evaluate = setting.evaluator(cfg, setting.analysis_eval_keys)
    pretrained, finetuned = models.pretrained, models.finetuned
    a, v = cfg.analysis, cfg.analysis.verdict
    figures: dict[str, Figure] = {}
    base = evaluate(finetuned)

    changes = relative_change(pretrained, finetuned)
    sink.log_metrics({f"weights.change.{name}": x for name, x in changes.items()}, 0)
    top_units = mlp_unit_change(pretrained, finetuned)[:8]
    figures["weights"] = weight_change_figure(changes, f"where fine-tuning changed the weights ({cfg.name})")

    curves, learned, first_pruned = _pruning(setting, cfg, tasks, finetuned, evaluate, sink)
    figures["pruning"] = pruning_figure(curves, f"pruning the fine-tuned model ({cfg.name})", setting.eval_metrics)

    random_init = random_like(pretrained, random_init_seed(cfg))
    # what each accuracy must beat, on every held-out set (the same numbers the training stages log)
    held_out = setting.eval_tensors(cfg)
    set_floors = answer_floors(held_out, getattr(tasks, "relation_holds", None), random_init)
    sink.log_metrics(set_floors, 0)
    reft_model = copy.deepcopy(finetuned)
    reft_evaluate = setting.evaluator(cfg, setting.reft_eval_keys)
    revival = reft_curves(setting, cfg, reft_model, models.control, random_init, reft_evaluate, sink, runtime)
    figures["reft"] = reft_figure(revival, v.reft_threshold, f"reverse fine-tuning ({cfg.name})")
    reft_steps = {label: steps_to_reach(curve, v.reft_threshold) for label, curve in revival.items()}

    probed = {"pretrained": pretrained, "fine-tuned": finetuned, "reFT": reft_model, "random init": random_init}
    probes, floors = _probing(cfg, tasks, probed, sink)
    figures["probes"] = probe_figure(probes, floors, f"linear probes per layer ({cfg.name})")
    shift, figures["attention"] = _attention(cfg, tasks, models, sink)
    answers = tasks.diagnose(finetuned)
    sink.log_metrics({f"answers.{k}": v for k, v in answers.items()}, 0)

    paper_curve = curves[PAPER_PRUNING]
    gains = [(m["pt_acc"] - paper_curve[0][1]["pt_acc"], k) for k, m in paper_curve if k <= v.prune_max_k]
    best_gain, best_k = max(gains) if gains else (0.0, 0)
    selected = held_out_gain([CurvePoint(k, m) for k, m in paper_curve], SELECT_KEY, "pt_acc", v.prune_max_k)
    pt_target = "pretraining target (count O_PT)"
    steps = list(reft_steps.values())
    evidence = Evidence(
        pt_acc_finetuned=base["pt_acc"], prune_best_gain=best_gain, prune_best_k=best_k,
        prune_heldout_gain=selected.gain, prune_selected_k=selected.k,
        probe_finetuned=max(probes[pt_target]["fine-tuned"].values()),
        probe_random_init=max(probes[pt_target]["random init"].values()),
        probe_pretrained=max(probes[pt_target]["pretrained"].values()),
        reft_steps_finetuned=steps[0], reft_steps_control=steps[1], reft_budget=a.reft.steps,
    )
    verdict = judge(evidence, v.prune_min_gain, v.probe_margin, v.reft_speedup)
    report = render_report(setting.describe(cfg), cfg, evidence, verdict, curves, probes, floors, reft_steps, shift,
                           len(learned.removed) if learned else None, answers, first_pruned)
    report += floors_markdown(set_floors, {k: answer_accuracy(finetuned, *xy) for k, xy in held_out.items()})
    report += weight_change_markdown(changes, top_units)
    reft_final = {key: curve[-1][1] for key, curve in zip(REFT_KEYS, revival.values(), strict=False)}
    output = AnalysisOutput(evidence, verdict, report, figures, reft_final)
    sink.log_metrics(output.summary_metrics(), 0)
    return output
