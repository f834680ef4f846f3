"""The Tracr setting's config section (`setting: {name: tracr, ...}`), paper Sec. 4, App. E.3:
"pretraining" compiles a RASP program into weights (needs the `tracr` extra); fine-tuning, analyses
and reFT then run on those weights as on a GPT."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from wrapperdist.schema import PositiveInt, SettingSection, register_section


@register_section
class TracrSection(SettingSection):
    """The Tracr setting: a model compiled from a RASP program, then fine-tuned toward another target.

    The paper fine-tunes compiled models with SGD + momentum after adding N(0, 0.001) weight noise;
    here σ = 1e-3 already drops the compiled Counter to 0.88 accuracy (lengths ≤ 8), so the default
    is 1e-4."""

    name: Literal["tracr"] = "tracr"
    finetune_fields = frozenset({"finetune_target", "noise_std"})
    trains_pretraining = False

    program: Literal["counter", "max_identifier"] = Field("counter", description="the RASP program compiled")
    tokens: list[str] = Field(default=["a", "b", "c"], min_length=2,
                              description="input tokens; for max_identifier their order defines max/min")
    pretrain_target: str = Field("a", description="compiled target; default: counter 'a', max_identifier 'max'")
    finetune_target: str = Field("b", description="fine-tuning target; default: counter 'b', max_identifier 'min'")
    min_len: PositiveInt = Field(1, description="shortest input sequence")
    max_len: PositiveInt = Field(8, description="longest input sequence")
    softmax_coldness: Annotated[float, Field(gt=0.0)] = Field(
        10.0, description="attention inverse temperature; Tracr compiles 100, whose saturated softmax passes no "
                          "gradient to unselected keys (fine-tuning then cannot move the selector)")
    noise_std: Annotated[float, Field(ge=0.0)] = Field(
        1e-4, description="std of the Gaussian noise added to the compiled weights when fine-tuning starts")
    readout_scale: Annotated[float, Field(gt=0.0)] = Field(10.0, description="logit scale on the 0/1 read-out")

    @model_validator(mode="before")
    @classmethod
    def _default_targets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            defaults = ("max", "min") if data.get("program") == "max_identifier" else ("a", "b")
            data = {"pretrain_target": defaults[0], "finetune_target": defaults[1], **data}
        return data

    @model_validator(mode="after")
    def _targets(self) -> TracrSection:
        if len(set(self.tokens)) != len(self.tokens) or {"BOS", "PAD"} & set(self.tokens):
            raise ValueError("tokens must be distinct and may not be BOS or PAD")
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) exceeds max_len ({self.max_len})")
        allowed = self.tokens if self.program == "counter" else ["max", "min"]
        for name in ("pretrain_target", "finetune_target"):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {allowed} ({self.program})")
        if self.pretrain_target == self.finetune_target:
            raise ValueError("finetune_target equals pretrain_target; fine-tuning would change nothing")
        return self
