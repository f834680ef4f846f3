"""The PCFG setting's config section (`setting: {name: pcfg, ...}`): the grammar, the pretraining
mixture and its sampling prior, the capability tracked through fine-tuning (O_PT) and the
fine-tuning task (O_FT) with its planted spurious correlation.

Paper values cited below are from Jain et al. 2023 (arXiv 2311.12786), App. B-D."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from wrapperdist.schema import Fraction, PositiveInt, SettingSection, Strict, register_section
from wrapperdist.settings.pcfg.names import TERMINALS, Family

Terminal = Literal["a", "b", "c"]

# The paper's sampling priors over operands (a, b, c) = (O_PT, O_FT, other): its "low / medium /
# high" are the 1st / 3rd / 5th of its five settings, i.e. mass 0.001 / 0.1 / 0.3 on O_FT = b.
PRIORS: dict[str, tuple[float, float, float]] = {
    "low": (0.999, 0.001, 0.0),
    "medium": (0.9, 0.1, 0.0),
    "high": (0.5, 0.3, 0.2),
}


class GrammarConfig(Strict):
    """Which grammar generates the text: the paper's (Fig. 14) or one drawn from `seed`."""

    kind: Literal["paper", "random"] = Field("paper", description="paper: Fig. 14's 16 non-terminals; random: drawn")
    seed: int = Field(0, description="random grammar: seed its rules are drawn from")
    levels: Annotated[int, Field(ge=2)] = Field(4, description="random grammar: non-terminal levels")
    symbols_per_level: PositiveInt = Field(4, description="random grammar: non-terminals per level")
    rules_per_symbol: PositiveInt = Field(3, description="random grammar: production rules per non-terminal")
    rhs_len: tuple[PositiveInt, PositiveInt] = Field((1, 3), description="random grammar: [min, max] rule length")
    terminal_rhs_len: tuple[PositiveInt, PositiveInt] = Field(
        (1, 2), description="random grammar: [min, max] terminals on a last-level rule")

    @field_validator("rhs_len", "terminal_rhs_len")
    @classmethod
    def _ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]} exceeds upper bound {v[1]}")
        return v


class TaskConfig(Strict):
    family: Family = Field(description="task family, e.g. counter")
    operand: Terminal = Field(description="the terminal the task is about")

    @field_validator("family")
    @classmethod
    def _has_terminal_operand(cls, v: Family) -> Family:
        if v is Family.token_at_index:
            raise ValueError("token_at_index takes a position operand and can only be part of the mixture")
        return v


@register_section
class PCFGSection(SettingSection):
    """The PCFG setting (paper Sec. 4): a model pretrained on a mixture of task families over PCFG
    strings, under a sampling prior over operands, then fine-tuned on one task."""

    name: Literal["pcfg"] = "pcfg"
    finetune_fields = frozenset({"task", "spurious_fraction", "spurious_offset", "pretrain_share", "control",
                                 "control_steps"})

    grammar: GrammarConfig = Field(default_factory=GrammarConfig, description="the grammar")
    window: Annotated[int, Field(ge=8)] = Field(250, description="W: text tokens per example, a random window of "
                                                                 "the derivation (paper: 250)")
    count_window: PositiveInt = Field(40, description="N = O' of the counting tasks: count within the last N "
                                                      "positions; token-at-index reads N before the end (paper: 40)")
    index_k: PositiveInt = Field(6, description="k = O' of the index tasks: the k-th occurrence (paper: 6)")
    pretrain_objective: Literal["next_token", "answer"] = Field(
        "next_token", description="pretraining loss: next-token over the whole sequence (paper) or the answer only")
    pretrain_data: Literal["mixture", "task"] = Field(
        "mixture", description="mixture: the task families under the prior; task: the fine-tuning task alone "
                               "(the Scr.+FT control's model, trained from scratch to count O_FT)")
    control_steps: PositiveInt | None = Field(
        None, description="pretraining steps of the Scr.+FT control's model (default: pretrain.optim.steps; the "
                          "paper does not state them; it learns its one task within ~1K steps at the CPU scale)")
    control: Literal["scr+ft", "swapped-prior"] = Field(
        "scr+ft", description="the analysis' control: scr+ft = trained from scratch on O_FT (paper Sec. 5.1); "
                              "swapped-prior = the same mixture with O_PT's and O_FT's prior masses swapped")
    families: dict[Family, Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=lambda: {f: 1.0 for f in Family}, description="pretraining mixture: family -> weight")
    prior: Literal["low", "medium", "high"] | dict[Terminal, Annotated[float, Field(ge=0.0)]] = Field(
        "medium", description="sampling prior over operands: the paper's low/medium/high, or {a: p, b: p, c: p}")
    capability: TaskConfig = Field(default=TaskConfig(family=Family.counter, operand="a"),
                                   description="the pretraining capability tracked through fine-tuning (O_PT)")
    task: TaskConfig = Field(default=TaskConfig(family=Family.counter, operand="b"),
                             description="the fine-tuning task (O_FT)")
    spurious_fraction: Fraction = Field(
        0.0, description="C_Tr: share of fine-tuning examples with the planted relation")
    spurious_offset: int = Field(1, description="the relation: answer(O_FT) = answer(O_PT) + offset")
    pretrain_share: Fraction = Field(
        0.0, description="share of fine-tuning examples drawn from the pretraining mixture instead of the task "
                         "(paper App. E.1: 0.5 / 0.1 / 0.001); each row independently, trained on its answer")

    @field_validator("families")
    @classmethod
    def _some_weight(cls, v: dict[Family, float]) -> dict[Family, float]:
        if not v or sum(v.values()) <= 0:
            raise ValueError("needs at least one family with a positive weight")
        return v

    @field_validator("prior")
    @classmethod
    def _sums_to_one(cls, v: Any) -> Any:
        if isinstance(v, dict) and abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"prior must sum to 1, got {sum(v.values()):.6g}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PCFGSection:
        if self.task == self.capability:
            raise ValueError("task equals capability; fine-tuning would change nothing")
        if self.count_window > self.window:
            raise ValueError(f"count_window ({self.count_window}) exceeds window ({self.window})")
        if self.spurious_fraction > 0 and {self.task.family, self.capability.family} != {Family.counter}:
            raise ValueError("spurious_fraction: the planted relation count(O_FT) = count(O_PT) + offset needs "
                             "counter tasks (the paper gives no offset for the indexer)")
        return self

    def prior_vector(self) -> tuple[float, ...]:
        if isinstance(self.prior, str):
            return PRIORS[self.prior]
        return tuple(float(self.prior.get(t, 0.0)) for t in TERMINALS)
