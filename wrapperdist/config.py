"""Configuration: pydantic models for every stage, loaded from YAML.

These models are the single source of configuration. Unknown keys are errors, and an invalid file
is rejected before any work starts with one line per problem naming the file, the field path and
the reason, e.g. `experiments/x.yaml: finetune.optim.lr: Input should be greater than 0`.

Paper values cited below are from Jain et al. 2023 (arXiv 2311.12786), App. C-D.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator, model_validator

# The built-in settings' config sections register themselves on import (see schema.SECTIONS).
import wrapperdist.settings.pcfg.config
import wrapperdist.settings.stories.config
import wrapperdist.settings.tracr.config  # noqa: F401
from wrapperdist.overrides import OverrideError, apply_overrides, parse_overrides
from wrapperdist.schema import SECTIONS, Fraction, PositiveInt, SettingSection, Strict, parse_section
from wrapperdist.yamlio import YamlError, read_yaml_file

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """An invalid configuration; `str()` has one `file: field.path: reason` line per problem."""


class ModelConfig(Strict):
    """minGPT shape (paper: 6 blocks, 6 heads, d_model 192)."""

    n_layer: PositiveInt = Field(6, description="transformer blocks")
    n_head: PositiveInt = Field(6, description="attention heads per block")
    d_model: PositiveInt = Field(192, description="residual stream width")
    d_mlp: PositiveInt | None = Field(None, description="MLP width; default 4 * d_model")
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.0, description="dropout probability")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        return self


class OptimConfig(Strict):
    """Optimiser and schedule (paper: AdamW, cosine with 20 % warm-up, min LR = max LR / 100)."""

    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="AdamW, or SGD with momentum")
    lr: Annotated[float, Field(gt=0.0)] = Field(description="peak learning rate")
    steps: PositiveInt = Field(description="optimisation steps")
    batch_size: PositiveInt = Field(description="global batch size (split across data-parallel workers)")
    weight_decay: Annotated[float, Field(ge=0.0)] = Field(0.1, description="on matrices only")
    betas: tuple[Fraction, Fraction] = Field((0.9, 0.95), description="AdamW betas")
    momentum: Fraction = Field(0.9, description="SGD momentum")
    grad_clip: Annotated[float, Field(ge=0.0)] = Field(1.0, description="max gradient norm; 0 = no clipping")
    warmup_frac: Fraction = Field(0.2, description="share of steps of linear warm-up")
    min_lr_ratio: Fraction = Field(0.01, description="cosine floor as a share of lr (1 = constant lr)")
    log_every: PositiveInt = Field(10, description="steps between training-loss points")
    eval_every: Annotated[int, Field(ge=0)] = Field(100, description="steps between evaluations; 0 = at the end only")
    checkpoint_every: Annotated[int, Field(ge=0)] = Field(0, description="steps between checkpoints; 0 = at the end")


class PretrainConfig(Strict):
    """Pretraining from scratch (the data are the setting's)."""

    optim: OptimConfig | None = Field(None, description="required, except where pretraining is not training "
                                                        "(the Tracr setting compiles)")


class FinetuneConfig(Strict):
    """Fine-tuning the pretrained model (the task is the setting's)."""

    optim: OptimConfig
    from_checkpoint: Path | None = Field(None, description="pretrained checkpoint for `wrapperdist finetune`")

    @field_validator("from_checkpoint")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file not found: {v}")
        return v


class EvalConfig(Strict):
    """Fixed held-out evaluation sets, the same for every stage of an experiment."""

    samples: PositiveInt = Field(2000, description="examples per held-out evaluation set")
    # far from training seeds, so eval sets never overlap a training stream
    seed: int = Field(1_000_003, description="seed of the held-out evaluation sets")


class PruneConfig(Strict):
    """Pruning to revive the pretraining capability (paper App. D, Alg. 3: 5-15 rows suffice)."""

    scope: Literal["blocks", "all"] = Field(
        "blocks", description="matrices whose rows (or weights) Alg. 3 may prune: blocks = attention and MLP; "
                              "all = also the embeddings and unembedding, whose rows are tokens and answer classes")
    ks: list[Annotated[int, Field(ge=0)]] = Field([0, 1, 2, 3, 5, 10, 15, 20, 30, 50],
                                                  description="numbers of units (rows, weights or MLP units) "
                                                              "removed, one evaluation each")
    score_samples: PositiveInt = Field(1024, description="pretraining-task examples for the one-step score")
    random_controls: PositiveInt = Field(3, description="random rankings averaged for the control curve")
    learned_steps: PositiveInt = Field(300, description="steps of the learned (continuous-sparsification) mask")
    learned_lr: Annotated[float, Field(gt=0.0)] = Field(0.05, description="learning rate of the mask logits")
    learned_penalty: Annotated[float, Field(ge=0.0)] = Field(1.0, description="penalty per share of units removed")
    learned_batch_size: PositiveInt = Field(256, description="batch size of the mask's training")
    mlp_units: bool = Field(True, description="also the named alternatives on MLP units: grad x weight and the "
                                              "learned mask (not the paper's unit; off saves about half the time)")


class ProbeConfig(Strict):
    """Linear probes on the residual stream at the answer position (paper App. D)."""

    samples: PositiveInt = Field(4000, description="examples whose activations the probe sees")
    test_frac: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.25, description="held-out share")
    steps: PositiveInt = Field(1000, description="AdamW steps (the paper: 4000 on fresh batches)")
    lr: Annotated[float, Field(gt=0.0)] = Field(1e-3, description="probe learning rate")
    fresh_batch_size: PositiveInt | None = Field(
        None, description="the paper's protocol: a fresh batch of this size from the generator at every step "
        "(held out: samples x test_frac examples); unset: full-batch on a fixed pool of `samples` (the CPU scale)")


DEFAULT_REFT_LR = 1e-4


class ReftConfig(Strict):
    """Reverse fine-tuning: train the fine-tuned model back on the pretraining capability. The
    paper uses the fine-tuning hyperparameters at a smaller LR; the Scr.+FT control gets the same
    protocol at this LR and at `control_lr_multiplier` times it."""

    steps: PositiveInt = Field(400, description="reFT steps of the analysis' revival curves")
    lr: Annotated[float, Field(gt=0.0)] | None = Field(
        None, description="reFT learning rate (default 1e-4, unless lr_factor is set)")
    lr_factor: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="reFT learning rate as this fraction of the fine-tuning LR (overrides lr)")
    below_finetune: bool = Field(
        True, description="require the reFT LR to be below the fine-tuning LR (paper App. D: a revival at a "
                          "lower LR is the stronger evidence)")
    eval_every: PositiveInt = Field(20, description="steps between points of the revival curves")
    control_lr_multiplier: Annotated[float, Field(gt=0.0)] = Field(
        10.0, description="the control's second, higher reFT learning rate, as a multiple of lr")
    scratch: bool = Field(True, description="also train a random init on the pretraining capability at the reFT "
                                            "LR (Scr., paper App. E.4)")

    @model_validator(mode="after")
    def _one_lr(self) -> ReftConfig:
        if self.lr_factor is not None and self.lr is not None:
            raise ValueError("give lr or lr_factor, not both")
        return self

    def effective_lr(self, finetune_lr: float) -> float:
        """reFT's learning rate: `lr_factor` × the fine-tuning LR where given, else `lr` (1e-4 if unset)."""
        if self.lr_factor is not None:
            return finetune_lr * self.lr_factor
        return self.lr if self.lr is not None else DEFAULT_REFT_LR


class VerdictConfig(Strict):
    """Explicit thresholds of the wrapper verdict."""

    prune_max_k: PositiveInt = Field(15, description="pruning counts only if it works with at most this many units")
    prune_min_gain: Fraction = Field(0.3, description="pt_acc gain from pruning that counts as revival")
    probe_margin: Fraction = Field(0.15, description="probe accuracy above the random-init floor that counts")
    reft_threshold: Fraction = Field(0.9, description="pt_acc that counts as revived")
    reft_speedup: Annotated[float, Field(ge=1.0)] = Field(
        2.0, description="reFT must reach the threshold this many times faster than Scr.+FT at the same LR"
    )


class AnalysisConfig(Strict):
    """The analysis stage: pruning, probing, attention maps, reFT and the verdict's thresholds."""

    prune: PruneConfig = Field(default_factory=PruneConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    reft: ReftConfig = Field(default_factory=ReftConfig)
    verdict: VerdictConfig = Field(default_factory=VerdictConfig)
    attention_prompts: PositiveInt = Field(4, description="prompts whose attention maps are compared")


class TrackingConfig(Strict):
    """Where MLflow records runs."""

    experiment: str = Field("wrapperdist", description="MLflow experiment name")
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else ./mlflow.db")


class ExperimentConfig(Strict):
    """One pretrain → fine-tune experiment in one setting."""

    name: str = Field("experiment", description="names the runs")
    seed: int = Field(0, description="seeds initialisation and every data stream")
    output_dir: Path = Field(Path("runs"), description="where `wrapperdist run` writes checkpoints and reports")
    setting: SerializeAsAny[SettingSection] = Field(
        description=f"the experimental setting and its own fields; `name` picks it ({', '.join(sorted(SECTIONS))})")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the transformer trained from scratch")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("setting", mode="before")
    @classmethod
    def _pick_setting(cls, value: Any) -> SettingSection:
        return parse_section(value)

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if self.setting.trains_pretraining and self.pretrain.optim is None:
            raise ValueError(f"pretrain.optim: required (the {self.setting.name} setting pretrains by training)")
        reft, ft_lr = self.analysis.reft, self.finetune.optim.lr
        lr = reft.effective_lr(ft_lr)
        if reft.below_finetune and lr >= ft_lr:
            raise ValueError(f"analysis.reft.lr: reFT's LR ({lr:g}) must be below the fine-tuning LR ({ft_lr:g}) "
                             "(paper App. D); lower it, set analysis.reft.lr_factor, or below_finetune: false")
        return self


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<top level>"


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        # pydantic's union errors repeat the path with the branch type appended; keep the field path.
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in {"str", "dict"})))
        # a whole-model check names its own field(s) at the start of its message
        lines.append(f"{source}: {_format_loc(loc)}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(dict.fromkeys(lines))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file: undecodable bytes, syntax errors and duplicate keys are one line each."""
    try:
        data = read_yaml_file(path)
    except YamlError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: <top level>: expected a mapping of settings, got {type(data).__name__}")
    return data


def load_config(path: str | Path, model: type[M] = ExperimentConfig,  # type: ignore[assignment]
                overrides: Sequence[str] = ()) -> M:
    """Read and validate a YAML file, with `--set path=value` overrides applied on top; raise
    ConfigError naming the file and every bad field (or the bad override)."""
    data = read_yaml(path)
    source = str(path)
    if overrides:
        try:
            apply_overrides(data, parse_overrides(overrides))
        except OverrideError as err:
            raise ConfigError(f"{path}: {err}") from None
        source = f"{path} (with --set {' '.join(overrides)})"
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the form MLflow params take."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_hash(*parts: BaseModel | dict[str, Any]) -> str:
    """A short content hash of configs: the identity of the stage they describe."""
    blobs = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    text = json.dumps(blobs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
