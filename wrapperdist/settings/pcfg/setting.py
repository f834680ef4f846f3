"""The PCFG setting (paper Sec. 4): a GPT pretrained on a mixture of task families over strings of
a probabilistic grammar, under a sampling prior over operands; fine-tuned on one task, with an
optional planted spurious correlation; analysed against a Scr.+FT control."""

from __future__ import annotations

import numpy as np

from wrapperdist.config import ExperimentConfig
from wrapperdist.models import GPT, GPTShape
from wrapperdist.setting import Batch, EvalMetric, StageKind
from wrapperdist.settings.answer import AnswerSetting
from wrapperdist.settings.answer_data import Which
from wrapperdist.settings.pcfg.config import PCFGSection
from wrapperdist.settings.pcfg.grammar import make_grammar
from wrapperdist.settings.pcfg.names import TERMINALS, Family
from wrapperdist.settings.pcfg.sampler import PCFGTasks, TaskSpec


class PCFGData:
    """The setting's data for one config section: the grammar's strings as task examples."""

    def __init__(self, s: PCFGSection):
        g = s.grammar
        grammar = make_grammar(g.seed, g.levels, g.symbols_per_level, g.rules_per_symbol, g.rhs_len,
                               g.terminal_rhs_len)
        self.tasks = PCFGTasks(grammar, g.min_len, g.max_len, g.index_k)
        self.section = s
        self.capability = TaskSpec(s.capability.family, s.capability.operand)
        self.target = TaskSpec(s.task.family, s.task.operand)
        self.family_weights = {Family(f): w for f, w in s.families.items()}
        self.prior = np.array(s.prior_vector())

    def batch(self, which: Which, n: int, rng: np.random.Generator) -> Batch:
        s = self.section
        if which == "capability":
            return self.tasks.task_batch(n, rng, self.capability)
        if which == "target":
            return self.tasks.task_batch(n, rng, self.target)
        if which == "finetune":
            return self.tasks.task_batch(n, rng, self.target, s.spurious_fraction, self.capability, s.spurious_offset)
        return self.tasks.mixture_batch(n, rng, self.family_weights, self.prior)

    def eval_sets(self, n: int, rng: np.random.Generator) -> dict[str, Batch]:
        return {
            "pt_acc": self.batch("capability", n, rng),
            "ft_acc": self.batch("target", n, rng),
            "ft_acc_spurious": self.tasks.task_batch(n, rng, self.target, 1.0, self.capability,
                                                     self.section.spurious_offset),
            "mix_acc": self.batch("pretrain", n, rng),
        }

    def answer_classes(self) -> tuple[int, int]:
        return self.tasks.vocab.max_number + 1, self.tasks.vocab.number_offset

    def decode(self, token: int) -> str:
        return self.tasks.vocab.decode(token)



class PCFGSetting(AnswerSetting):
    name = "pcfg"
    control_name = "Scr.+FT control"
    eval_metrics = {
        "pt_acc": EvalMetric("pretraining task (count O_PT)"),
        "ft_acc": EvalMetric("fine-tuning task (count O_FT), C_Te=0"),
        "ft_acc_spurious": EvalMetric("fine-tuning task, C_Te=1"),
        "mix_acc": EvalMetric("pretraining mixture"),
    }

    def tasks(self, cfg: ExperimentConfig) -> PCFGData:
        return PCFGData(PCFGSection.of(cfg))

    def layout(self, cfg: ExperimentConfig) -> tuple[int, int]:
        tasks = self.tasks(cfg).tasks
        return tasks.vocab.size, tasks.seq_len

    def build_model(self, cfg: ExperimentConfig) -> GPT:
        m, (vocab_size, seq_len) = cfg.model, self.layout(cfg)
        return GPT(GPTShape(vocab_size=vocab_size, seq_len=seq_len, n_layer=m.n_layer, n_head=m.n_head,
                            d_model=m.d_model, d_mlp=m.d_mlp or 4 * m.d_model, dropout=m.dropout))

    def control_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """Scr.+FT control: the same pretraining with O_FT in O_PT's place (their prior masses
        swapped), so the model is strong at counting O_FT and never had a strong O_PT counter."""
        s = PCFGSection.of(cfg)
        prior = list(s.prior_vector())
        i, j = TERMINALS.index(s.capability.operand), TERMINALS.index(s.task.operand)
        prior[i], prior[j] = prior[j], prior[i]
        swapped = s.model_copy(update={"prior": dict(zip(TERMINALS, prior, strict=True))})
        return cfg.model_copy(update={"name": f"{cfg.name}-scr-control", "setting": swapped})

    def run_label(self, cfg: ExperimentConfig, kind: StageKind) -> str:
        s = PCFGSection.of(cfg)
        vector = ",".join(f"{p:g}" for p in s.prior_vector())
        shown = s.prior if isinstance(s.prior, str) else f"({vector})"
        pretrained = f"prior={shown} seed={cfg.seed}"
        if kind == "pretrain":
            return pretrained
        return f"lr={cfg.finetune.optim.lr:g} C_Tr={s.spurious_fraction:g} {pretrained}"

    def describe(self, cfg: ExperimentConfig) -> str:
        s = PCFGSection.of(cfg)
        return f"{s.task.family}({s.task.operand}), C_Tr = {s.spurious_fraction}, pretraining prior {s.prior}"
