"""The stories setting's analysis of a deletion fine-tune (paper Sec. 5.2, App. F, Tab. 1, Fig. 11):
did fine-tuning delete the feature from the model's generations, is it still decodable from the
residual stream as well as in the model that had it ("Present in PT") rather than as poorly as in
one that never saw it ("Not in PT"), and does reFT on stories that have it bring it back faster
than for the Not-in-PT model? Pure over (config, models); reports through a sink."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from matplotlib.figure import Figure

from wrapperdist.config import ExperimentConfig
from wrapperdist.mech import mlp_unit_change, relative_change, steps_to_reach, weight_change_markdown
from wrapperdist.memo import memoised, weights_digest
from wrapperdist.models import HookedModule, random_like
from wrapperdist.plots import probe_figure, reft_figure, weight_change_figure
from wrapperdist.setting import AnalysisModels, Runtime, Setting
from wrapperdist.settings.stories.config import StoriesSection
from wrapperdist.settings.stories.lm import (
    build_corpus,
    build_tokenizer,
    feature_prompts,
    feature_rate,
    make_story_evaluator,
)
from wrapperdist.settings.stories.probing import ProbeData, probe_data, probe_model
from wrapperdist.settings.stories.records import normalize_feature
from wrapperdist.settings.stories.report import render
from wrapperdist.settings.stories.revival import Curves, reft_at_points
from wrapperdist.sink import MemorySink, PrefixSink, Sink
from wrapperdist.stages import reft_lr

# Names of the probed models, as the paper's Fig. 11 labels them.
MEMO_VERSION = 1  # bump when the evaluation, probes or reFT change: a memo of the old code is stale
PRESENT, NOT_IN_PT, DELETED, RANDOM = "Present in PT", "Not in PT", "deleted", "random init"
KEYS = {PRESENT: "present", DELETED: "deleted", NOT_IN_PT: "not_in_pt", RANDOM: "random"}  # metric names


@dataclass
class StoriesEvidence:
    rate_pretrained: float  # share of feature-requesting prompts whose generation has the feature (copy-free)
    rate_finetuned: float
    rate_control: float
    rate_unasked_pretrained: float  # ... for prompts that do not ask for it (the detector's false alarms)
    probe_finetuned: float  # best-layer held-out accuracy for "has the feature"
    probe_pretrained: float
    probe_control: float
    probe_random_init: float
    probe_majority: float
    reft_steps_finetuned: int | None  # first reFT point at `reft_threshold` × the pretrained rate
    reft_steps_control: int | None
    reft_budget: int


@dataclass
class StoriesVerdict:
    label: str
    deleted: bool
    probe_decodes: bool
    reft_faster: bool
    reft_speedup: float | None


@dataclass
class StoriesAnalysisOutput:
    evidence: StoriesEvidence
    verdict: StoriesVerdict
    report: str
    figures: dict[str, Figure] = field(default_factory=dict)
    reft_final: dict[str, float] = field(default_factory=dict)
    table: dict[str, float] = field(default_factory=dict)  # Tab. 1 cells and per-layer probes, flat

    @property
    def label(self) -> str:
        return self.verdict.label

    def summary_metrics(self) -> dict[str, float]:
        e, v = self.evidence, self.verdict
        metrics = {f"evidence.{k}": float(x) for k, x in asdict(e).items() if x is not None}
        metrics |= {"evidence.reft_reached_finetuned": float(e.reft_steps_finetuned is not None),
                    "evidence.reft_reached_control": float(e.reft_steps_control is not None),
                    "evidence.probe_gap": e.probe_finetuned - e.probe_control,
                    **{f"evidence.reft_final_rate_{k}": x for k, x in self.reft_final.items()},
                    **self.table,
                    "verdict_wrapper": float(v.label == "wrapper"), "verdict_deleted": float(v.deleted),
                    "verdict_probe_decodes": float(v.probe_decodes), "verdict_reft_faster": float(v.reft_faster)}
        if v.reft_speedup is not None:
            metrics["verdict_reft_speedup"] = v.reft_speedup
        return metrics


def _reference_key(cfg: ExperimentConfig, model: HookedModule) -> dict[str, Any]:
    """What a per-seed reference result depends on: the weights, and every config part that shapes
    its evaluation, probes and reFT (not the deletion protocol nor the deletion's LR)."""
    s = StoriesSection.of(cfg)
    reft_optim = cfg.finetune.optim.model_dump(mode="json", exclude={"lr", "steps", "eval_every", "checkpoint_every"})
    return {"version": MEMO_VERSION, "weights": weights_digest(model),
            "setting": s.model_dump(mode="json", exclude={"deletion"}), "eval": cfg.eval.model_dump(mode="json"),
            "probe": cfg.analysis.probe.model_dump(mode="json"), "reft": cfg.analysis.reft.model_dump(mode="json"),
            "reft_lr": reft_lr(cfg), "seed": cfg.seed, "reft_optim": reft_optim}


def _log_curves(sink: Sink, curves: Curves) -> None:
    for metric, curve in curves.items():
        for step, value in curve:
            sink.log_metrics({metric: value}, step)


def _as_curves(raw: dict[str, list]) -> Curves:
    return {k: [(int(s), float(v)) for s, v in curve] for k, curve in raw.items()}


def _at_start(curves: Curves) -> dict[str, float]:
    return {k: curve[0][1] for k, curve in curves.items() if curve and curve[0][0] == 0}


def _evidence(rates: dict[str, dict[str, float]], unasked: float, probes: dict[str, dict], majority: float,
              ft_twist: list, control_twist: list, target: float, budget: int) -> StoriesEvidence:
    return StoriesEvidence(
        rate_pretrained=rates[PRESENT]["twist_rate"], rate_finetuned=rates[DELETED]["twist_rate"],
        rate_control=rates[NOT_IN_PT]["twist_rate"], rate_unasked_pretrained=unasked,
        probe_finetuned=max(probes[DELETED].values()), probe_pretrained=max(probes[PRESENT].values()),
        probe_control=max(probes[NOT_IN_PT].values()), probe_random_init=max(probes[RANDOM].values()),
        probe_majority=majority, reft_steps_finetuned=steps_to_reach(ft_twist, target),
        reft_steps_control=steps_to_reach(control_twist, target), reft_budget=budget,
    )


def _paper_table(ft_curves: Curves, control_curves: Curves, probes: dict[str, dict]) -> dict[str, float]:
    """The numbers behind Tab. 1 and the probe-per-layer figure, as flat metrics of the analysis run."""
    return {**{f"tab1.deleted.at_{step}": x for step, x in ft_curves["twist_rate"]},
            **{f"tab1.not_in_pt.at_{step}": x for step, x in control_curves["twist_rate"]},
            **{f"reftloss.deleted.at_{step}": x for step, x in ft_curves.get("loss_twist", [])},
            **{f"reftloss.not_in_pt.at_{step}": x for step, x in control_curves.get("loss_twist", [])},
            **{f"probe_layer.{KEYS[name]}.{depth}": acc
               for name, per_layer in probes.items() for depth, acc in enumerate(per_layer.values())}}


def analyze_stories(setting: Setting, cfg: ExperimentConfig, models: AnalysisModels, sink: Sink,
                    runtime: Runtime) -> StoriesAnalysisOutput:
    s, a = StoriesSection.of(cfg), cfg.analysis
    runtime.apply()
    pretrained, finetuned, control = models.pretrained, models.finetuned, models.control
    tokenizer = build_tokenizer(s)
    corpus = build_corpus(s)
    feature = normalize_feature(s.feature)
    evaluate = make_story_evaluator(s, tokenizer, corpus, seed=cfg.eval.seed)
    data: ProbeData = probe_data(s, tokenizer, a.probe)
    lr = reft_lr(cfg)

    def present_reference() -> dict[str, Any]:
        unasked = feature_rate(pretrained, tokenizer, feature_prompts(s, corpus, False), s, cfg.eval.seed)
        return {"rates": evaluate(pretrained), "unasked": unasked, "probe": probe_model(pretrained, data, a.probe),
                "random": probe_model(random_like(pretrained, cfg.seed + 1), data, a.probe)}

    def not_in_pt_reference() -> dict[str, Any]:
        # logged below from the (possibly cached) result, so every analysis run carries the curve
        curves = reft_at_points(setting, cfg, copy.deepcopy(control), lr, MemorySink(), runtime, evaluate,
                                "reFT Not in PT")
        return {"probe": probe_model(control, data, a.probe), "reft": curves}

    present = memoised(runtime.memo, "stories-present", _reference_key(cfg, pretrained), present_reference)
    absent = memoised(runtime.memo, "stories-not-in-pt", _reference_key(cfg, control), not_in_pt_reference)
    # reFT on stories with the feature: the deleted model vs the Not-in-PT model (memoised per seed);
    # each curve's point 0 is its model's evaluation before reFT
    ft_curves = reft_at_points(setting, cfg, copy.deepcopy(finetuned), lr, PrefixSink(sink, "reft.finetuned."),
                               runtime, evaluate, "reFT deleted")
    control_curves = _as_curves(absent["reft"])
    _log_curves(PrefixSink(sink, "reft.control."), control_curves)
    rates = {PRESENT: present["rates"], DELETED: _at_start(ft_curves), NOT_IN_PT: _at_start(control_curves)}
    for name, metrics in rates.items():
        sink.log_metrics({f"gen.{KEYS[name]}.{k}": v for k, v in metrics.items()}, 0)

    changes = relative_change(pretrained, finetuned)
    sink.log_metrics({f"weights.change.{n}": x for n, x in changes.items()}, 0)
    figures: dict[str, Figure] = {
        "weights": weight_change_figure(changes, f"where deletion fine-tuning changed the weights ({cfg.name})")}

    target = a.verdict.reft_threshold * rates[PRESENT]["twist_rate"]
    shown = {f"deleted → reFT (lr {lr:g})": ft_curves["twist_rate"],
             f"Not in PT → reFT (lr {lr:g})": control_curves["twist_rate"]}
    ylabel = f"share of generations with {feature} (prompted; copy-free)"
    figures["reft"] = reft_figure(shown, target, f"reverse fine-tuning on {feature} stories ({cfg.name})", ylabel)

    probes = {PRESENT: present["probe"], DELETED: probe_model(finetuned, data, a.probe), NOT_IN_PT: absent["probe"],
              RANDOM: present["random"]}
    for name, per_layer in probes.items():
        for depth, acc in enumerate(per_layer.values()):
            sink.log_metrics({f"probe.{KEYS[name]}": acc}, depth)
    figures["probes"] = probe_figure({f"has {feature}": probes}, {f"has {feature}": data.majority},
                                     f"linear probes for {feature}, story text only ({cfg.name})")

    evidence = _evidence(rates, present["unasked"], probes, data.majority, ft_curves["twist_rate"],
                         control_curves["twist_rate"], target, a.reft.steps)
    verdict = judge_stories(evidence, a.verdict.probe_margin, a.verdict.reft_speedup)
    table = _paper_table(ft_curves, control_curves, probes)
    report = render(cfg, s, evidence, verdict, rates, {"deleted": ft_curves, "Not in PT": control_curves}, probes,
                    data.majority)
    report += weight_change_markdown(changes, mlp_unit_change(pretrained, finetuned)[:8])
    finals = {"finetuned": ft_curves["twist_rate"][-1][1], "control": control_curves["twist_rate"][-1][1]}
    output = StoriesAnalysisOutput(evidence, verdict, report, figures, finals, table)
    sink.log_metrics(output.summary_metrics(), 0)
    return output


def judge_stories(e: StoriesEvidence, probe_margin: float, reft_speedup: float) -> StoriesVerdict:
    """deleted: fine-tuning at least halves the feature's rate in generations. probe_decodes: the
    deleted model's best-layer probe is `probe_margin` above the Not-in-PT model's (the paper's
    comparator, Fig. 11). reft_faster: reFT reaches the threshold share of the pretrained rate
    `reft_speedup`× sooner than the Not-in-PT model, or reaches it while the Not-in-PT model never
    does within the budget (the reFT points are log-spaced, 0 / 1 % / 10 % / 100 %, so reaching it
    only at the last point bounds the speedup by budget / budget; `reft_speedup` keeps that bound).
    wrapper = deleted and reFT faster and the probe decodes; not deleted; capability changed =
    deleted and neither sign; mixed otherwise."""
    deleted = e.rate_finetuned <= 0.5 * e.rate_pretrained
    probe = e.probe_finetuned - e.probe_control >= probe_margin
    never = e.reft_budget + 1
    ft = e.reft_steps_finetuned if e.reft_steps_finetuned is not None else never
    ctrl = e.reft_steps_control if e.reft_steps_control is not None else never
    speedup = ctrl / max(ft, 1) if e.reft_steps_finetuned is not None else None
    faster = speedup is not None and (speedup >= reft_speedup or e.reft_steps_control is None)
    if not deleted:
        label = "not deleted"
    elif faster and probe:
        label = "wrapper"
    elif not (faster or probe):
        label = "capability changed"
    else:
        label = "mixed"
    return StoriesVerdict(label, deleted, probe, faster, speedup)


def evidence_from_metrics(metrics: dict[str, float]) -> StoriesEvidence:
    """The evidence an analysis run logged (`summary_metrics`), read back (a step never reached is absent)."""
    names = [f for f in StoriesEvidence.__dataclass_fields__]
    values = {f: metrics.get(f"evidence.{f}") for f in names}
    for f in ("reft_steps_finetuned", "reft_steps_control", "reft_budget"):
        values[f] = None if values[f] is None else int(values[f])
    return StoriesEvidence(**values)
