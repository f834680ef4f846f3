"""A fourth experimental setting, written as a plug-in outside the package: a toy copy task.

Examples are `length` random tokens followed by a query token; the answer, predicted at the last
position, is one of the tokens. The pretraining capability O_PT copies the token at
`pretrain_position`, the fine-tuning task O_FT the one at `finetune_position`. The control model
(Scr.+FT) is pretrained on O_FT instead.

This one module is the whole setting: a config section (`setting: {name: toy, ...}`) registered
with `schema.register_section`, an `AnswerSetting` subclass, and one `registry.register` call. Name
it in $WRAPPERDIST_PLUGINS (`toy_setting`, with tests/ on sys.path) to make it known to the CLI."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from wrapperdist.config import ExperimentConfig
from wrapperdist.models import GPT, GPTShape
from wrapperdist.schema import PositiveInt, SettingSection, register_section
from wrapperdist.setting import Batch, EvalMetric, StageKind
from wrapperdist.settings.answer import AnswerSetting
from wrapperdist.settings.registry import register

NAME = "toy"


@register_section
class ToySection(SettingSection):
    """A toy copy task: answer the token at a fixed position of a random sequence."""

    name: Literal["toy"] = NAME
    finetune_fields = frozenset({"finetune_position"})

    vocab: PositiveInt = Field(8, description="distinct content tokens (chance accuracy is 1 / vocab)")
    length: PositiveInt = Field(4, description="content tokens per example")
    pretrain_position: int = Field(0, ge=0, description="O_PT: copy the token at this position")
    finetune_position: int = Field(1, ge=0, description="O_FT: copy the token at this position")

    @model_validator(mode="after")
    def _positions(self) -> ToySection:
        for pos in (self.pretrain_position, self.finetune_position):
            if pos >= self.length:
                raise ValueError(f"position {pos} is outside a sequence of length {self.length}")
        if self.pretrain_position == self.finetune_position:
            raise ValueError("finetune_position equals pretrain_position; fine-tuning would change nothing")
        return self


class ToyData:
    """Token ids 0..vocab-1 are content (and the answers); id `vocab` is the query token."""

    def __init__(self, s: ToySection):
        self.s = s

    def _copy(self, position: int, n: int, rng: np.random.Generator) -> Batch:
        content = rng.integers(0, self.s.vocab, size=(n, self.s.length), dtype=np.int64)
        query = np.full((n, 1), self.s.vocab, dtype=np.int64)
        return np.concatenate([content, query], axis=1), content[:, position].copy()

    def batch(self, which: str, n: int, rng: np.random.Generator) -> Batch:
        """`which`: capability / pretrain (O_PT) or target / finetune (O_FT): see settings/answer*.py."""
        if which in ("capability", "pretrain"):
            return self._copy(self.s.pretrain_position, n, rng)
        return self._copy(self.s.finetune_position, n, rng)  # target / finetune: no planted correlation

    def eval_sets(self, n: int, rng: np.random.Generator) -> dict[str, Batch]:
        return {"pt_acc": self.batch("capability", n, rng), "ft_acc": self.batch("target", n, rng)}

    def answer_classes(self) -> int:
        return self.s.vocab

    def answer_class(self, answers):
        return answers

    def decode(self, token: int) -> str:
        return "?" if token == self.s.vocab else f"t{token}"

    def diagnose(self, model) -> dict[str, float]:
        return {}


class ToySetting(AnswerSetting):
    name = NAME

    def control_label(self, cfg: ExperimentConfig) -> str:
        return "Scr.+FT control"
    eval_metrics = {
        "pt_acc": EvalMetric("copy O_PT's position"),
        "ft_acc": EvalMetric("copy O_FT's position"),
    }

    def tasks(self, cfg: ExperimentConfig) -> ToyData:
        return ToyData(ToySection.of(cfg))

    def layout(self, cfg: ExperimentConfig) -> tuple[int, int]:
        s = ToySection.of(cfg)
        return s.vocab + 1, s.length + 1

    def build_model(self, cfg: ExperimentConfig) -> GPT:
        vocab_size, seq_len = self.layout(cfg)
        return GPT(GPTShape.of(cfg.model, vocab_size, seq_len))

    def control_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        s = ToySection.of(cfg)
        swapped = s.model_copy(update={"pretrain_position": s.finetune_position,
                                       "finetune_position": s.pretrain_position})
        return cfg.model_copy(update={"name": f"{cfg.name}-scr-control", "setting": swapped})

    def run_label(self, cfg: ExperimentConfig, kind: StageKind) -> str:
        s = ToySection.of(cfg)
        pretrained = f"copy@{s.pretrain_position} seed={cfg.seed}"
        if kind == "pretrain":
            return pretrained
        return f"lr={cfg.finetune.optim.lr:g} to=copy@{s.finetune_position} {pretrained}"

    def describe(self, cfg: ExperimentConfig) -> str:
        s = ToySection.of(cfg)
        return (f"copy of position {s.finetune_position}, pretrained to copy position {s.pretrain_position} "
                f"({s.vocab} tokens, length {s.length})")


SETTING = register(ToySetting())
