"""The stories setting's analysis of a deletion fine-tune (paper App. F): did fine-tuning delete
the feature from the model's generations, is it still decodable from the residual stream, and does
reFT on stories that have it bring it back faster than for the 'Not in PT' control, a model that
never saw it? Pure over (config, models); reports through a sink."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from matplotlib.figure import Figure

from wrapperdist.config import ExperimentConfig
from wrapperdist.mech import mlp_unit_change, relative_change, steps_to_reach, train_probe, weight_change_markdown
from wrapperdist.models import HookedModule, random_like
from wrapperdist.plots import probe_figure, reft_figure, weight_change_figure
from wrapperdist.setting import AnalysisModels, Runtime, Setting
from wrapperdist.settings.stories.config import StoriesSection
from wrapperdist.settings.stories.lm import (
    build_corpus,
    build_tokenizer,
    encode,
    feature_prompts,
    feature_rate,
    generations,
    make_story_evaluator,
)
from wrapperdist.settings.stories.records import normalize_feature
from wrapperdist.settings.stories.tokenizer import PAD, special_id
from wrapperdist.sink import PrefixSink, Sink
from wrapperdist.stages import reft_lr, run_reft

LAST_POSITIONS = 10  # the paper's probe reads the mean residual over the story's last 10 tokens


@dataclass
class StoriesEvidence:
    rate_pretrained: float  # share of feature-requesting prompts whose generation has the feature
    rate_finetuned: float
    rate_control: float
    rate_unasked_pretrained: float  # ... for prompts that do not ask for it (the detector's false alarms)
    probe_finetuned: float  # best-layer held-out accuracy for "has the feature"
    probe_pretrained: float
    probe_control: float
    probe_random_init: float
    probe_majority: float
    reft_steps_finetuned: int | None  # to reach `revival_share` of the pretrained rate
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

    @property
    def label(self) -> str:
        return self.verdict.label

    def summary_metrics(self) -> dict[str, float]:
        e, v = self.evidence, self.verdict
        metrics = {f"evidence.{k}": float(x) for k, x in asdict(e).items() if x is not None}
        metrics |= {"evidence.reft_reached_finetuned": float(e.reft_steps_finetuned is not None),
                    "evidence.reft_reached_control": float(e.reft_steps_control is not None),
                    "evidence.probe_gap": e.probe_finetuned - e.probe_random_init,
                    **{f"evidence.reft_final_rate_{k}": x for k, x in self.reft_final.items()},
                    "verdict_wrapper": float(v.label == "wrapper"), "verdict_deleted": float(v.deleted),
                    "verdict_probe_decodes": float(v.probe_decodes), "verdict_reft_faster": float(v.reft_faster)}
        if v.reft_speedup is not None:
            metrics["verdict_reft_speedup"] = v.reft_speedup
        return metrics


@torch.no_grad()
def story_features(model: HookedModule, tokens: torch.Tensor, pad_id: int,
                   batch_size: int = 64) -> dict[str, torch.Tensor]:
    """{layer: (N, d)} mean residual over each story's last LAST_POSITIONS real tokens."""
    model.eval()
    names = model.residual_names()
    lengths = (tokens != pad_id).sum(1)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(0, len(tokens), batch_size):
        x, n = tokens[i : i + batch_size], lengths[i : i + batch_size]
        positions = torch.arange(x.shape[1])[None, :]
        window = ((positions < n[:, None]) & (positions >= (n[:, None] - LAST_POSITIONS))).float()[..., None]
        with model.capture(names) as cache:
            model(x)
        for name in names:
            out[name].append((cache[name] * window).sum(1) / window.sum(1))
    return {n: torch.cat(v) for n, v in out.items()}


def probe_feature(models: dict[str, HookedModule], s: StoriesSection, cfg: ExperimentConfig,
                  tokenizer) -> tuple[dict, float]:
    """Per model and layer: held-out accuracy of a linear probe for "this story has the feature",
    on the story text alone (the instructions stripped, as in the paper's probe)."""
    pr = cfg.analysis.probe
    corpus = build_corpus(s)
    records = [*corpus.eval, *corpus.finetune][: pr.samples]
    feature = normalize_feature(s.feature)
    labels = torch.tensor([int(r.has(feature)) for r in records])
    tokens = torch.from_numpy(encode(tokenizer, [r.story for r in records], s.seq_len)[0])
    cut = int(len(records) * (1 - pr.test_frac))
    majority = float((labels[cut:] == labels[:cut].mode().values).float().mean())
    results: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        acts = story_features(model, tokens, special_id(tokenizer, PAD))
        results[name] = {layer: train_probe(a[:cut], labels[:cut], a[cut:], labels[cut:], 2, pr.steps, pr.lr).test_acc
                         for layer, a in acts.items()}
    return results, majority


def analyze_stories(setting: Setting, cfg: ExperimentConfig, models: AnalysisModels, sink: Sink,
                    runtime: Runtime) -> StoriesAnalysisOutput:
    s, a = StoriesSection.of(cfg), cfg.analysis
    runtime.apply()
    pretrained, finetuned, control = models.pretrained, models.finetuned, models.control
    tokenizer = build_tokenizer(s)
    corpus = build_corpus(s)
    feature = normalize_feature(s.feature)
    evaluate = make_story_evaluator(s, tokenizer, corpus, seed=cfg.eval.seed)
    figures: dict[str, Figure] = {}

    rates = {name: evaluate(m) for name, m in (("pretrained", pretrained), ("fine-tuned", finetuned),
                                                ("control", control))}
    for name, metrics in rates.items():
        sink.log_metrics({f"gen.{name}.{k}": v for k, v in metrics.items()}, 0)
    unasked = feature_rate(generations(pretrained, tokenizer, feature_prompts(s, corpus, False), s, cfg.eval.seed),
                           feature)

    changes = relative_change(pretrained, finetuned)
    sink.log_metrics({f"weights.change.{n}": x for n, x in changes.items()}, 0)
    figures["weights"] = weight_change_figure(changes, f"where deletion fine-tuning changed the weights ({cfg.name})")

    # reFT on stories with the feature: the fine-tuned model vs the control that never had it
    target = a.verdict.reft_threshold * rates["pretrained"]["twist_rate"]
    lr = reft_lr(cfg)
    reft_model = copy.deepcopy(finetuned)
    curves = {
        f"fine-tuned → reFT (lr {lr:g})": run_reft(setting, cfg, reft_model, lr,
                                                         PrefixSink(sink, "reft.finetuned."), runtime,
                                                         evaluate=evaluate, desc="reFT fine-tuned"),
        f"Not in PT control (lr {lr:g})": run_reft(setting, cfg, copy.deepcopy(control), lr,
                                                          PrefixSink(sink, "reft.control."), runtime,
                                                          evaluate=evaluate, desc="reFT control"),
    }
    ylabel = f"share of generations with {feature} (prompted for it)"
    figures["reft"] = reft_figure(curves, target, f"reverse fine-tuning on {feature} stories ({cfg.name})", ylabel)
    steps = [steps_to_reach(c, target) for c in curves.values()]

    probed = {"pretrained": pretrained, "fine-tuned": finetuned, "reFT": reft_model, "Not in PT control": control,
              "random init": random_like(pretrained, cfg.seed + 1)}
    probes, majority = probe_feature(probed, s, cfg, tokenizer)
    for name, per_layer in probes.items():
        for depth, acc in enumerate(per_layer.values()):
            sink.log_metrics({f"probe.{name}": acc}, depth)
    figures["probes"] = probe_figure({f"has {feature}": probes}, {f"has {feature}": majority},
                                     f"linear probes for {feature}, story text only ({cfg.name})")

    evidence = StoriesEvidence(
        rate_pretrained=rates["pretrained"]["twist_rate"], rate_finetuned=rates["fine-tuned"]["twist_rate"],
        rate_control=rates["control"]["twist_rate"], rate_unasked_pretrained=unasked,
        probe_finetuned=max(probes["fine-tuned"].values()), probe_pretrained=max(probes["pretrained"].values()),
        probe_control=max(probes["Not in PT control"].values()), probe_random_init=max(probes["random init"].values()),
        probe_majority=majority, reft_steps_finetuned=steps[0], reft_steps_control=steps[1], reft_budget=a.reft.steps,
    )
    verdict = judge_stories(evidence, a.verdict.probe_margin, a.verdict.reft_speedup)
    top_units = mlp_unit_change(pretrained, finetuned)[:8]
    report = render(cfg, s, evidence, verdict, rates, curves, probes, majority)
    report += weight_change_markdown(changes, top_units)
    finals = [curve[-1][1] for curve in curves.values()]
    output = StoriesAnalysisOutput(evidence, verdict, report, figures, {"finetuned": finals[0], "control": finals[1]})
    sink.log_metrics(output.summary_metrics(), 0)
    return output


def judge_stories(e: StoriesEvidence, probe_margin: float, reft_speedup: float) -> StoriesVerdict:
    """deleted: fine-tuning at least halves the feature's rate in generations. probe_decodes: the
    feature is probed `probe_margin` above the random-init probe. reft_faster: reFT reaches the
    threshold share of the pretrained rate `reft_speedup`× sooner than the control (budget+1 = never).
    wrapper = deleted and reFT faster and the probe decodes; not deleted; capability changed =
    deleted and neither sign; mixed otherwise."""
    deleted = e.rate_finetuned <= 0.5 * e.rate_pretrained
    probe = e.probe_finetuned - e.probe_random_init >= probe_margin
    never = e.reft_budget + 1
    ft = e.reft_steps_finetuned if e.reft_steps_finetuned is not None else never
    ctrl = e.reft_steps_control if e.reft_steps_control is not None else never
    speedup = ctrl / max(ft, 1) if e.reft_steps_finetuned is not None else None
    faster = speedup is not None and speedup >= reft_speedup
    if not deleted:
        label = "not deleted"
    elif faster and probe:
        label = "wrapper"
    elif not (faster or probe):
        label = "capability changed"
    else:
        label = "mixed"
    return StoriesVerdict(label, deleted, probe, faster, speedup)


def render(cfg: ExperimentConfig, s: StoriesSection, e: StoriesEvidence, v: StoriesVerdict, rates, curves, probes,
           majority) -> str:
    never = "not reached"
    layers = list(next(iter(probes.values())))
    lines = [
        f"# Deletion analysis: {cfg.name}", "",
        f"**Verdict: {v.label}** (deleted: {v.deleted}, probe decodes: {v.probe_decodes}, reFT faster than the "
        f"control: {v.reft_faster})", "",
        f"Deletion of {s.feature!r} by {s.deletion} at lr {cfg.finetune.optim.lr:g} for "
        f"{cfg.finetune.optim.steps} steps; corpus: {s.path or 'generated'} ({s.stories} stories).", "",
        "## Generations prompted for the feature (share that have it) and held-out losses", "",
        "| model | feature rate | loss on stories with it | loss on stories without |", "|---|---|---|---|",
        *(f"| {name} | {m['twist_rate']:.3f} | {m.get('loss_twist', float('nan')):.3f} | "
          f"{m.get('loss_plain', float('nan')):.3f} |" for name, m in rates.items()),
        "", f"Prompts that do not ask for it (pretrained model): {e.rate_unasked_pretrained:.3f}.", "",
        f"## reFT on stories with {s.feature} (steps to {cfg.analysis.verdict.reft_threshold:.0%} of the pretrained "
        f"rate, budget {e.reft_budget})", "",
        f"- fine-tuned → reFT: {e.reft_steps_finetuned if e.reft_steps_finetuned is not None else never}",
        f"- Not in PT control → reFT: {e.reft_steps_control if e.reft_steps_control is not None else never}",
        *(f"- {label}: " + ", ".join(f"{step}: {x:.2f}" for step, x in curve) for label, curve in curves.items()),
        "", "## Linear probe for the feature (held-out accuracy per layer; story text only)", "",
        "| model | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers),
        *(f"| {name} | " + " | ".join(f"{x:.3f}" for x in per.values()) + " |" for name, per in probes.items()),
        "", f"Majority class: {majority:.3f}.", "",
    ]
    return "\n".join(lines)
