"""The PCFG setting (paper Sec. 4): a GPT pretrained on a mixture of task families over strings of
a probabilistic grammar, under a sampling prior over operands; fine-tuned on one task, with an
optional planted spurious correlation; analysed against a Scr.+FT control."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wrapperdist.config import ExperimentConfig
from wrapperdist.identity import default_pretrain_identity
from wrapperdist.models import GPT, GPTShape, HookedModule
from wrapperdist.setting import Batch, DataStage, EvalMetric, LossFn, StageKind
from wrapperdist.settings.answer import AnswerSetting
from wrapperdist.settings.answer_data import Which
from wrapperdist.settings.pcfg.config import PCFGSection
from wrapperdist.settings.pcfg.grammar import make_grammar, paper_grammar
from wrapperdist.settings.pcfg.names import TERMINALS, Family
from wrapperdist.settings.pcfg.sampler import PCFGTasks, TaskSpec
from wrapperdist.train import loss_on_batch, next_token_loss

DIAGNOSIS_SEED = 7_000_011  # prompts for the answer breakdown: disjoint from training and eval streams


class PCFGData:
    """The setting's data for one config section: the grammar's strings as task examples."""

    def __init__(self, s: PCFGSection):
        g = s.grammar
        grammar = paper_grammar() if g.kind == "paper" else make_grammar(
            g.seed, g.levels, g.symbols_per_level, g.rules_per_symbol, g.rhs_len, g.terminal_rhs_len)
        self.tasks = PCFGTasks(grammar, s.window, s.count_window, s.index_k)
        self.section = s
        self.capability = TaskSpec(s.capability.family, s.capability.operand)
        self.target = TaskSpec(s.task.family, s.task.operand)
        self.family_weights = {Family(f): w for f, w in s.families.items()}
        self.prior = np.array(s.prior_vector())
        self.counts = {s.task.family, s.capability.family} == {Family.counter}

    def batch(self, which: Which, n: int, rng: np.random.Generator) -> Batch:
        s = self.section
        if which == "capability":
            return self.tasks.task_batch(n, rng, self.capability)
        if which == "target":
            return self.tasks.task_batch(n, rng, self.target)
        if which == "finetune":
            batch = self.tasks.task_batch(n, rng, self.target, s.spurious_fraction, self.capability, s.spurious_offset)
            return self._with_pretraining_rows(batch, rng) if s.pretrain_share > 0 else batch
        if s.pretrain_data == "task":  # the Scr.+FT control's model: the fine-tuning task alone, from scratch
            return self.tasks.task_batch(n, rng, self.target)
        return self.tasks.mixture_batch(n, rng, self.family_weights, self.prior)

    def _with_pretraining_rows(self, batch: Batch, rng: np.random.Generator) -> Batch:
        """Pretraining data mixed into fine-tuning (paper App. E.1): each row is, with probability
        `pretrain_share`, replaced by an example of the pretraining mixture. Row by row rather than a
        fixed count per batch, so that a share below 1 / batch size (the paper's 0.1 %) still appears.
        The paper does not say which loss the mixed-in rows get; here the fine-tuning loss (the answer
        token), so a mixed row is a supervised example of a pretraining task (counting `a` among them)."""
        tokens, answers = (a.copy() for a in batch)
        rows = np.flatnonzero(rng.random(len(answers)) < self.section.pretrain_share)
        if rows.size:
            tokens[rows], answers[rows] = self.tasks.mixture_batch(rows.size, rng, self.family_weights, self.prior)
        return tokens, answers

    def eval_sets(self, n: int, rng: np.random.Generator) -> dict[str, Batch]:
        """O_PT and O_FT on C_Te = 0 (the planted relation fails: `texts_without`), on C_Te = 1 (it
        holds: planted) and on plain strings (`_plain`: it holds by chance), and the pretraining
        distribution. Where no relation is planted (not two counters) C_Te = 0 is the plain strings.

        The draws keep their old order, so a seed gives the same plain, C_Te = 1 and mixture sets as
        before C_Te = 0 excluded the relation. C_Te = 0 comes from a child stream of `rng` (spawning
        draws nothing from it), so it does not depend on what the other sets draw: the Scr.+FT control,
        whose pretraining set is drawn otherwise, gets the same C_Te = 0. O_PT and O_FT share the
        strings of C_Te = 0 and of C_Te = 1 (the relation is a property of the string), not of the
        plain sets."""
        (free_rng,) = rng.spawn(1)
        plain = {"pt_acc": self.batch("capability", n, rng), "ft_acc": self.batch("target", n, rng)}
        if not self.counts:  # the planted relation (C_Te = 1) is defined for the counter only
            return {**plain, "mix_acc": self.batch("pretrain", n, rng)}
        relation = (self.target, self.capability, self.section.spurious_offset)
        correlated = self.tasks.plant(self.tasks.texts(n, rng), *relation, rng)
        mixture = self.batch("pretrain", n, rng)
        free = self.tasks.texts_without(n, free_rng, *relation)
        return {"pt_acc": self.tasks.labelled(free, self.capability), "ft_acc": self.tasks.labelled(free, self.target),
                "pt_acc_spurious": self.tasks.labelled(correlated, self.capability),
                "ft_acc_spurious": self.tasks.labelled(correlated, self.target),
                "pt_acc_plain": plain["pt_acc"], "ft_acc_plain": plain["ft_acc"], "mix_acc": mixture}

    def relation_holds(self, tokens: np.ndarray) -> np.ndarray | None:
        """Per encoded example, whether count(O_FT) = count(O_PT) + offset holds in its text; None where
        no relation is planted."""
        if not self.counts:
            return None
        return self.tasks.relation_holds(self.tasks.texts_of(tokens), self.target, self.capability,
                                         self.section.spurious_offset)

    def diagnose(self, model: HookedModule, n: int = 1000) -> dict[str, float]:
        """What the model answers on O_PT prompts of C_Te = 0: the share of answers equal to count(O_PT),
        count(O_PT) + offset, count(O_FT) (a share can fall in several when counts coincide), and
        none of them. A clean wrapper answers count(O_FT); a revivable one keeps count(O_PT) inside.
        The prompts exclude the planted relation (as C_Te = 0 does) so that count(O_PT) + offset and
        count(O_FT) never coincide: on plain strings a quarter of the answers would fit both, and the
        breakdown could not tell the planted rule from counting O_FT there."""
        rng = np.random.default_rng(DIAGNOSIS_SEED)
        s = self.section
        texts = (self.tasks.texts_without(n, rng, self.target, self.capability, s.spurious_offset) if self.counts
                 else self.tasks.texts(n, rng))
        tokens, answers = self.tasks.labelled(texts, self.capability)
        with torch.no_grad():
            said = model.eval()(torch.from_numpy(tokens), last_only=True).argmax(-1).numpy()
        target = self.tasks.labelled(texts, self.target)[1]
        plus = answers + s.spurious_offset  # number tokens are contiguous: count + offset
        shares = {"count_pt": said == answers, "count_pt_plus_offset": said == plus, "count_ft": said == target}
        other = ~(shares["count_pt"] | shares["count_pt_plus_offset"] | shares["count_ft"])
        return {**{k: float(v.mean()) for k, v in shares.items()}, "other": float(other.mean())}

    def answer_classes(self) -> int:
        return self.tasks.vocab.max_number + 2  # NONE, then the numbers 0..max

    def answer_class(self, answers: torch.Tensor) -> torch.Tensor:
        """Class ids for probes: 0 = NONE (an absent k-th occurrence), n + 1 = the number n."""
        vocab = self.tasks.vocab
        return torch.where(answers == vocab.NONE, torch.zeros_like(answers), answers - vocab.number_offset + 1)

    def decode(self, token: int) -> str:
        return self.tasks.vocab.decode(token)



class PCFGSetting(AnswerSetting):
    name = "pcfg"
    eval_metrics = {
        "pt_acc": EvalMetric("pretraining task (count O_PT), C_Te=0 (relation fails)"),
        "ft_acc": EvalMetric("fine-tuning task (count O_FT), C_Te=0 (relation fails)"),
        "pt_acc_spurious": EvalMetric("pretraining task, C_Te=1 (relation holds)"),
        "ft_acc_spurious": EvalMetric("fine-tuning task, C_Te=1 (relation holds)"),
        "pt_acc_plain": EvalMetric("pretraining task, plain strings (relation by chance)"),
        "ft_acc_plain": EvalMetric("fine-tuning task, plain strings (relation by chance)"),
        "mix_acc": EvalMetric("pretraining mixture"),
    }
    analysis_eval_keys = ("pt_acc", "ft_acc", "pt_acc_spurious", "ft_acc_spurious")

    def tasks(self, cfg: ExperimentConfig) -> PCFGData:
        return PCFGData(PCFGSection.of(cfg))

    def control_label(self, cfg: ExperimentConfig) -> str:
        return "Scr.+FT control" if PCFGSection.of(cfg).control == "scr+ft" else "swapped-prior control"

    def layout(self, cfg: ExperimentConfig) -> tuple[int, int]:
        tasks = self.tasks(cfg).tasks
        return tasks.vocab.size, tasks.seq_len

    def build_model(self, cfg: ExperimentConfig) -> GPT:
        vocab_size, seq_len = self.layout(cfg)
        return GPT(GPTShape.of(cfg.model, vocab_size, seq_len))

    def loss_fn(self, cfg: ExperimentConfig, stage: DataStage) -> LossFn:
        """Pretraining: next-token prediction over the whole sequence (paper App. C.2) unless the
        config asks for the answer only; fine-tuning and reFT: the answer ("supervised", App. C.2)."""
        if stage == "pretrain" and PCFGSection.of(cfg).pretrain_objective == "next_token":
            return next_token_loss
        return loss_on_batch

    def pretrain_identity(self, cfg: ExperimentConfig) -> dict[str, Any]:
        ident = default_pretrain_identity(cfg)
        s = PCFGSection.of(cfg)
        if s.pretrain_data == "task":  # trained on the task alone: the prior plays no part (shared by all priors)
            ident["setting"] = {k: v for k, v in ident["setting"].items() if k not in ("prior", "families")}
            ident["setting"]["task"] = s.task.model_dump(mode="json")  # ... but the task is what it learns
        return ident

    def control_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """scr+ft (the paper's, Sec. 5.1): a model trained from scratch to count O_FT alone, shared by
        all priors of a seed. swapped-prior (an extra): the same pretraining mixture with O_FT in O_PT's
        place (their prior masses swapped)."""
        s = PCFGSection.of(cfg)
        if s.control == "scr+ft":
            scratch = s.model_copy(update={"pretrain_data": "task"})
            control = cfg.model_copy(update={"name": f"{cfg.name}-scr-ft", "setting": scratch})
            if s.control_steps and cfg.pretrain.optim:
                optim = cfg.pretrain.optim.model_copy(update={"steps": s.control_steps})
                control = control.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"optim": optim})})
            return control
        prior = list(s.prior_vector())
        i, j = TERMINALS.index(s.capability.operand), TERMINALS.index(s.task.operand)
        prior[i], prior[j] = prior[j], prior[i]
        swapped = s.model_copy(update={"prior": dict(zip(TERMINALS, prior, strict=True))})
        return cfg.model_copy(update={"name": f"{cfg.name}-scr-control", "setting": swapped})

    def run_label(self, cfg: ExperimentConfig, kind: StageKind) -> str:
        s = PCFGSection.of(cfg)
        vector = ",".join(f"{p:g}" for p in s.prior_vector())
        shown = s.prior if isinstance(s.prior, str) else f"({vector})"
        trained_on = f"prior={shown}" if s.pretrain_data == "mixture" else f"{s.task.family}({s.task.operand})"
        pretrained = f"{trained_on} seed={cfg.seed}"
        if kind == "pretrain":
            return pretrained
        mixed = f" PT={s.pretrain_share:g}" if s.pretrain_share else ""  # App. E.1's share of PT data
        return f"lr={cfg.finetune.optim.lr:g} C_Tr={s.spurious_fraction:g}{mixed} {pretrained}"

    def describe(self, cfg: ExperimentConfig) -> str:
        s = PCFGSection.of(cfg)
        return f"{s.task.family}({s.task.operand}), C_Tr = {s.spurious_fraction}, pretraining prior {s.prior}"
