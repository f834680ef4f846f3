"""The Tracr setting (paper Sec. 4, App. E.3): transformers whose capability is compiled from a RASP
program rather than learned, then fine-tuned and analysed like the PCFG models. Compiling needs the
optional `tracr` extra (JAX); data, the torch model and checkpoints do not."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wrapperdist.config import ExperimentConfig
from wrapperdist.models import TracrTransformer
from wrapperdist.setting import AnalysisModels, AnalysisResult, Batch, EvalMetric, Runtime, StageKind
from wrapperdist.settings.answer import AnswerSetting
from wrapperdist.settings.answer_data import Which
from wrapperdist.settings.tracr.compile import compile_target, to_torch
from wrapperdist.settings.tracr.config import TracrSection
from wrapperdist.settings.tracr.tasks import TracrTarget, TracrTasks, tracr_vocab
from wrapperdist.settings.tracr.weights_analysis import attention_shares, single_weight_analysis
from wrapperdist.sink import Sink

DIAGNOSIS_SEED, DIAGNOSIS_PROMPTS = 7_000_021, 200  # disjoint from training, eval and analysis streams


class TracrData:
    """Random sequences over the program's tokens, labelled by the compiled target or the fine-tuning
    one; the fine-tuning stream carries the planted correlation at C_Tr, and the held-out sets are
    C_Te = 0 (the relation fails on every example), C_Te = 1 (it holds on every one) and plain."""

    def __init__(self, s: TracrSection):
        self.section = s
        self.tasks = TracrTasks(tracr_vocab(s.program, s.tokens, s.max_len), s.tokens, s.min_len, s.max_len,
                                replacement=s.program == "counter")
        self.capability = TracrTarget(s.program, s.pretrain_target)
        self.target = TracrTarget(s.program, s.finetune_target)

    def planted(self, n: int, rng: np.random.Generator) -> list[list[str]]:
        return self.tasks.sample_planted(n, rng, self.capability, self.target, self.section.spurious_offset)

    def batch(self, which: Which, n: int, rng: np.random.Generator) -> Batch:
        if which == "capability":
            return self.tasks.task_batch(n, rng, self.capability)
        if which == "target":
            return self.tasks.task_batch(n, rng, self.target)
        if which == "finetune":
            s = self.section
            sequences = self.tasks.mixed(n, rng, self.capability, self.target, s.spurious_offset, s.spurious_fraction)
            return self.tasks.labelled(sequences, self.target)
        raise ValueError("the Tracr setting compiles its pretrained model: there is no pretraining stream")

    def eval_sets(self, n: int, rng: np.random.Generator) -> dict[str, Batch]:
        """C_Te = 0 (the relation fails), C_Te = 1 (it holds) and plain sequences (`_plain`: by chance).
        The draws keep their old order (plain, planted), so a seed gives the same plain and C_Te = 1
        sets as before C_Te = 0 excluded the relation; C_Te = 0 comes from a child stream of `rng`
        (spawning draws nothing from it), as in the PCFG setting."""
        (free_rng,) = rng.spawn(1)
        plain = {"pt_acc_plain": self.batch("capability", n, rng), "ft_acc_plain": self.batch("target", n, rng)}
        planted = self.planted(n, rng)
        free = self.tasks.sample_without(n, free_rng, self.capability, self.target, self.section.spurious_offset)
        return {"pt_acc": self.tasks.labelled(free, self.capability), "ft_acc": self.tasks.labelled(free, self.target),
                "pt_acc_spurious": self.tasks.labelled(planted, self.capability),
                "ft_acc_spurious": self.tasks.labelled(planted, self.target), **plain}

    def relation_holds(self, tokens: np.ndarray) -> np.ndarray:
        """Per encoded example, whether r(x, O_FT) - r(x, O_PT) = q holds."""
        return self.tasks.relation_holds(self.tasks.sequences_of(tokens), self.capability, self.target,
                                         self.section.spurious_offset)

    def answer_classes(self) -> int:
        return len(self.tasks.vocab.answers)

    def answer_class(self, answers: torch.Tensor) -> torch.Tensor:
        return answers  # the compiled read-out's outputs are the answer classes themselves

    def decode(self, token: int) -> str:
        return self.tasks.vocab.decode(token)

    def diagnose(self, model: Any) -> dict[str, float]:
        """The share of attention on O_PT's and on O_FT's keys per block (paper Fig. 10)."""
        rng = np.random.default_rng(DIAGNOSIS_SEED)
        return attention_shares(model, self.tasks, self.tasks.sample(DIAGNOSIS_PROMPTS, rng),
                                self.capability, self.target)


class TracrSetting(AnswerSetting):
    name = "tracr"
    pruning_unit = "weights"  # the paper prunes single weights of the compiled models (App. D)
    eval_metrics = {
        "pt_acc": EvalMetric("compiled target (O_PT), C_Te=0 (relation fails)"),
        "ft_acc": EvalMetric("fine-tuning target (O_FT), C_Te=0 (relation fails)"),
        "pt_acc_spurious": EvalMetric("compiled target (O_PT), C_Te=1 (relation holds)"),
        "ft_acc_spurious": EvalMetric("fine-tuning target (O_FT), C_Te=1 (relation holds)"),
        "pt_acc_plain": EvalMetric("compiled target (O_PT), plain sequences (relation by chance)"),
        "ft_acc_plain": EvalMetric("fine-tuning target (O_FT), plain sequences (relation by chance)"),
    }
    analysis_eval_keys = ("pt_acc", "ft_acc", "pt_acc_spurious", "ft_acc_spurious")

    def tasks(self, cfg: ExperimentConfig) -> TracrData:
        return TracrData(TracrSection.of(cfg))

    def layout(self, cfg: ExperimentConfig) -> tuple[int, int]:
        tasks = self.tasks(cfg).tasks
        return tasks.vocab.size, tasks.seq_len

    def build_model(self, cfg: ExperimentConfig) -> TracrTransformer:
        raise ValueError("the Tracr setting compiles its pretrained model; it never builds one to train")

    def compile(self, cfg: ExperimentConfig) -> TracrTransformer:
        """Compile the RASP program and convert it to torch, exact (the paper's weight noise is
        added when fine-tuning starts)."""
        s = TracrSection.of(cfg)
        compiled = compile_target(TracrTarget(s.program, s.pretrain_target), s.tokens, s.max_len, s.mlp_exactness)
        return to_torch(compiled, s.readout_scale, s.softmax_coldness)

    def prepare_finetune(self, cfg: ExperimentConfig, model: Any, source: str) -> None:
        """The paper's Tracr protocol: perturb the compiled weights, then fine-tune."""
        super().prepare_finetune(cfg, model, source)
        noise = TracrSection.of(cfg).noise_std
        if noise > 0:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * noise)

    def pretrain_identity(self, cfg: ExperimentConfig) -> dict[str, Any]:
        # compiled, deterministic: no seed, no model or optimiser sections
        return {"setting": cfg.setting.pretrain_part(), "eval": cfg.eval.model_dump(mode="json")}

    def finetune_identity(self, cfg: ExperimentConfig) -> dict[str, Any]:
        return {"seed": cfg.seed, **super().finetune_identity(cfg)}  # the seed first enters at fine-tuning

    def control_label(self, cfg: ExperimentConfig) -> str:
        return "Scr.+FT control"

    def control_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """Scr.+FT control: the program compiled for the fine-tuning target instead."""
        s = TracrSection.of(cfg)
        # the same relation read from the other side: r(x, O_PT) - r(x, O_FT) = -q
        swapped = s.model_copy(update={"pretrain_target": s.finetune_target, "finetune_target": s.pretrain_target,
                                       "spurious_offset": -s.spurious_offset})
        return cfg.model_copy(update={"name": f"{cfg.name}-scr-control", "setting": swapped})

    def run_label(self, cfg: ExperimentConfig, kind: StageKind) -> str:
        s = TracrSection.of(cfg)
        compiled = f"tracr={s.program}({s.pretrain_target})"
        if kind == "pretrain":
            return compiled
        return (f"lr={cfg.finetune.optim.lr:g} C_Tr={s.spurious_fraction:g} to={s.finetune_target} {compiled} "
                f"seed={cfg.seed}")

    def describe(self, cfg: ExperimentConfig) -> str:
        s = TracrSection.of(cfg)
        return (f"Tracr {s.program} compiled for {s.pretrain_target!r}, fine-tuned toward {s.finetune_target!r} "
                f"(tokens {''.join(s.tokens)}, lengths {s.min_len}-{s.max_len}, C_Tr {s.spurious_fraction:g}, "
                f"q {s.spurious_offset}, weight noise {s.noise_std:g}, softmax coldness {s.softmax_coldness:g})")

    def analyze(self, cfg: ExperimentConfig, models: AnalysisModels, sink: Sink, runtime: Runtime) -> AnalysisResult:
        """The shared analysis, plus the paper's Tracr pruning view (Figs. 55-57): single weights named
        (block, matrix, index), removed cumulatively and one at a time."""
        output = super().analyze(cfg, models, sink, runtime)
        extra = single_weight_analysis(self, cfg, self.tasks(cfg), models.finetuned, sink)
        output.figures["pruning_weights"] = extra.figure
        output.report += extra.report
        return output
