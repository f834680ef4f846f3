"""The Tracr setting (paper Sec. 4, App. E.3): transformers whose capability is compiled from a RASP
program rather than learned, then fine-tuned and analysed like the PCFG models. Compiling needs the
optional `tracr` extra (JAX); data, the torch model and checkpoints do not."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wrapperdist.config import ExperimentConfig
from wrapperdist.models import TracrTransformer
from wrapperdist.setting import Batch, EvalMetric, StageKind
from wrapperdist.settings.answer import AnswerSetting
from wrapperdist.settings.answer_data import Which
from wrapperdist.settings.tracr.compile import compile_target, to_torch
from wrapperdist.settings.tracr.config import TracrSection
from wrapperdist.settings.tracr.tasks import TracrTarget, TracrTasks, tracr_vocab


class TracrData:
    """Random sequences over the program's tokens, labelled by the compiled target or the fine-tuning one."""

    def __init__(self, s: TracrSection):
        self.tasks = TracrTasks(tracr_vocab(s.program, s.tokens, s.max_len), s.tokens, s.min_len, s.max_len)
        self.capability = TracrTarget(s.program, s.pretrain_target)
        self.target = TracrTarget(s.program, s.finetune_target)

    def batch(self, which: Which, n: int, rng: np.random.Generator) -> Batch:
        if which == "capability":
            return self.tasks.task_batch(n, rng, self.capability)
        if which in ("target", "finetune"):  # no planted correlation in this setting
            return self.tasks.task_batch(n, rng, self.target)
        raise ValueError("the Tracr setting compiles its pretrained model: there is no pretraining stream")

    def eval_sets(self, n: int, rng: np.random.Generator) -> dict[str, Batch]:
        return {"pt_acc": self.batch("capability", n, rng), "ft_acc": self.batch("target", n, rng)}

    def answer_classes(self) -> int:
        return len(self.tasks.vocab.answers)

    def answer_class(self, answers: torch.Tensor) -> torch.Tensor:
        return answers  # the compiled read-out's outputs are the answer classes themselves

    def decode(self, token: int) -> str:
        return self.tasks.vocab.decode(token)

    def diagnose(self, model: Any) -> dict[str, float]:
        return {}



class TracrSetting(AnswerSetting):
    name = "tracr"
    pruning_unit = "weights"  # the paper prunes single weights of the compiled models (App. D)
    eval_metrics = {
        "pt_acc": EvalMetric("compiled target (O_PT)"),
        "ft_acc": EvalMetric("fine-tuning target (O_FT)"),
    }

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
        compiled = compile_target(TracrTarget(s.program, s.pretrain_target), s.tokens, s.max_len)
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
        swapped = s.model_copy(update={"pretrain_target": s.finetune_target, "finetune_target": s.pretrain_target})
        return cfg.model_copy(update={"name": f"{cfg.name}-scr-control", "setting": swapped})

    def run_label(self, cfg: ExperimentConfig, kind: StageKind) -> str:
        s = TracrSection.of(cfg)
        compiled = f"tracr={s.program}({s.pretrain_target})"
        if kind == "pretrain":
            return compiled
        return f"lr={cfg.finetune.optim.lr:g} to={s.finetune_target} {compiled} seed={cfg.seed}"

    def describe(self, cfg: ExperimentConfig) -> str:
        s = TracrSection.of(cfg)
        return (f"Tracr {s.program} compiled for {s.pretrain_target!r}, fine-tuned toward {s.finetune_target!r} "
                f"(tokens {s.tokens}, lengths {s.min_len}-{s.max_len}, weight noise {s.noise_std:g})")
