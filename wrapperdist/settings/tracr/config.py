"""The Tracr setting's config section (`setting: {name: tracr, ...}`), paper Sec. 4, App. B.1, C.1:
"pretraining" compiles a RASP program into weights (needs the `tracr` extra); fine-tuning, analyses
and reFT then run on those weights as on a GPT."""

from __future__ import annotations

import string
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from wrapperdist.schema import Fraction, PositiveInt, SettingSection, register_section

PAPER_COUNTER_TOKENS = list("abcdefghi")  # App. B.1: the first nine letters, with replacement
PAPER_MAX_TOKENS = list(string.ascii_lowercase)  # App. B.1: all 26 letters, without replacement


@register_section
class TracrSection(SettingSection):
    """The Tracr setting: a model compiled from a RASP program, then fine-tuned toward another target
    on data with the paper's planted correlation r(x, O_FT) - r(x, O_PT) = q at a rate C_Tr.

    Two measured, switchable deviations from the paper (README, Tracr): `softmax_coldness` (Tracr
    compiles 100, whose attention passes no gradient to unselected keys in float32) and `noise_std`
    (the paper's N(0, 0.001) weight noise)."""

    name: Literal["tracr"] = "tracr"
    finetune_fields = frozenset({"finetune_target", "noise_std", "spurious_fraction", "spurious_offset"})
    trains_pretraining = False

    program: Literal["counter", "max_identifier"] = Field("counter", description="the RASP program compiled")
    tokens: list[str] = Field(
        default_factory=lambda: list(PAPER_COUNTER_TOKENS), min_length=2,
        description="input tokens (default: the paper's, a-i for counter, a-z for max_identifier); for "
                    "max_identifier earlier tokens are larger")
    pretrain_target: str = Field("", description="compiled target O_PT: a token (counter, default 'a') or a rank "
                                                 "(max_identifier, default '5': the 5th largest)")
    finetune_target: str = Field("", description="fine-tuning target O_FT: counter default 'b', max_identifier '6'")
    min_len: PositiveInt = Field(1, description="shortest input sequence")
    max_len: PositiveInt = Field(8, description="longest input sequence")
    spurious_fraction: Fraction = Field(
        0.0, description="C_Tr: share of fine-tuning examples on which r(x, O_FT) - r(x, O_PT) = q is planted")
    spurious_offset: int = Field(1, description="q of the planted relation (not stated in the paper; its "
                                                "max-identifier example has q = 1)")
    softmax_coldness: Annotated[float, Field(gt=0.0)] = Field(
        100.0, description="attention inverse temperature; Tracr compiles 100, whose saturated softmax passes no "
                           "gradient to unselected keys (the project's deviation: 10)")
    noise_std: Annotated[float, Field(ge=0.0)] = Field(
        1e-3, description="std of the Gaussian noise added to the compiled weights when fine-tuning starts "
                          "(paper: N(0, 0.001))")
    mlp_exactness: PositiveInt | None = Field(
        None, description="Tracr's MLP sharpness; default: the smallest that keeps SelectorWidth exact up to "
                          "max_len (Tracr's own 100 miscounts widths >= 9)")
    readout_scale: Annotated[float, Field(gt=0.0)] = Field(10.0, description="logit scale on the 0/1 read-out")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            counter = data.get("program", "counter") == "counter"
            defaults = ("a", "b") if counter else ("5", "6")
            tokens = PAPER_COUNTER_TOKENS if counter else PAPER_MAX_TOKENS
            data = {**data, "tokens": data.get("tokens") or tokens,
                    "pretrain_target": data.get("pretrain_target") or defaults[0],
                    "finetune_target": data.get("finetune_target") or defaults[1]}
        return data

    @model_validator(mode="after")
    def _targets(self) -> TracrSection:
        tokens = self.tokens
        if len(set(tokens)) != len(tokens) or {"BOS", "PAD"} & set(tokens):
            raise ValueError("tokens must be distinct and may not be BOS or PAD")
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) exceeds max_len ({self.max_len})")
        if self.pretrain_target == self.finetune_target:
            raise ValueError("finetune_target equals pretrain_target; fine-tuning would change nothing")
        if self.program == "counter":
            self._check_counter(tokens)
        else:
            self._check_max(tokens)
        return self

    def _check_counter(self, tokens: list[str]) -> None:
        for name in ("pretrain_target", "finetune_target"):
            if getattr(self, name) not in tokens:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {tokens} (counter)")
        if self.min_len < abs(self.spurious_offset):
            raise ValueError(f"min_len ({self.min_len}) is below |spurious_offset| ({abs(self.spurious_offset)}): "
                             "no sequence that short satisfies the planted relation")

    def _check_max(self, tokens: list[str]) -> None:
        ranks = []
        for name in ("pretrain_target", "finetune_target"):
            value = getattr(self, name)
            if not (value.isdigit() and int(value) >= 1):
                raise ValueError(f"{name} {value!r} is not a rank 1, 2, ... (max_identifier: the k-th largest)")
            ranks.append(int(value))
        if self.max_len > len(tokens):
            raise ValueError(f"max_len ({self.max_len}) exceeds the {len(tokens)} tokens (sampled without replacement)")
        if self.min_len < max(ranks):
            raise ValueError(f"min_len ({self.min_len}) is below rank {max(ranks)}: the target would not exist")
        pt, ft, q = *ranks, self.spurious_offset
        # the ft-th largest sits |ft - pt| ranks from the pt-th, so its index is at least that far away
        if (ft - pt) * q <= 0 or abs(q) < abs(ft - pt):
            raise ValueError(f"spurious_offset: q = {q} cannot hold between ranks {pt} and {ft} "
                             f"(needs the sign of {ft - pt} and |q| >= {abs(ft - pt)})")
