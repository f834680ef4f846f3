"""Configuration: pydantic models for every stage, loaded from YAML.

These models are the single source of configuration. Unknown keys are errors, and an invalid file
is rejected before any work starts with one line per problem naming the file, the field path and
the reason, e.g. `sweeps/x.yaml: finetune.optim.lr: Input should be greater than 0`.

Paper values cited below are from Jain et al. 2023 (arXiv 2311.12786), App. C-D.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wrapperdist.data.grammar import TERMINALS
from wrapperdist.data.tasks import Family

Terminal = Literal["a", "b", "c"]
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

# The paper's sampling priors over operands (a, b, c) = (O_PT, O_FT, other): its "low / medium /
# high" are the 1st / 3rd / 5th of its five settings, i.e. mass 0.001 / 0.1 / 0.3 on O_FT = b.
PRIORS: dict[str, tuple[float, float, float]] = {
    "low": (0.999, 0.001, 0.0),
    "medium": (0.9, 0.1, 0.0),
    "high": (0.5, 0.3, 0.2),
}


M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """An invalid configuration; `str()` has one `file: field.path: reason` line per problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrammarConfig(Strict):
    """The PCFG (drawn from `seed`) and the string lengths kept from it."""

    seed: int = 0
    levels: Annotated[int, Field(ge=2)] = 4
    symbols_per_level: PositiveInt = 4
    rules_per_symbol: PositiveInt = 3
    rhs_len: tuple[PositiveInt, PositiveInt] = (1, 3)
    terminal_rhs_len: tuple[PositiveInt, PositiveInt] = (1, 2)
    min_len: PositiveInt = 8
    max_len: PositiveInt = 24
    index_k: PositiveInt = Field(3, description="k of the index-of-occurrence tasks (paper: 6)")

    @field_validator("rhs_len", "terminal_rhs_len")
    @classmethod
    def _ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]} exceeds upper bound {v[1]}")
        return v

    @model_validator(mode="after")
    def _length_range(self) -> GrammarConfig:
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) exceeds max_len ({self.max_len})")
        return self


class TaskConfig(Strict):
    family: Family
    operand: Terminal

    @field_validator("family")
    @classmethod
    def _has_terminal_operand(cls, v: Family) -> Family:
        if v is Family.token_at_index:
            raise ValueError("token_at_index takes a position operand and can only be part of the mixture")
        return v


class PretrainDataConfig(Strict):
    """The pretraining mixture: task-family weights and the sampling prior over operands."""

    families: dict[Family, Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=lambda: {f: 1.0 for f in Family}
    )
    prior: Literal["low", "medium", "high"] | dict[Terminal, Annotated[float, Field(ge=0.0)]] = "medium"

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

    def prior_vector(self) -> tuple[float, ...]:
        if isinstance(self.prior, str):
            return PRIORS[self.prior]
        return tuple(float(self.prior.get(t, 0.0)) for t in TERMINALS)


class ModelConfig(Strict):
    """minGPT shape (paper: 6 blocks, 6 heads, d_model 192)."""

    n_layer: PositiveInt = 6
    n_head: PositiveInt = 6
    d_model: PositiveInt = 192
    d_mlp: PositiveInt | None = Field(None, description="MLP width; default 4 * d_model")
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        return self


class OptimConfig(Strict):
    """Optimiser and schedule (paper: AdamW, cosine with 20 % warm-up, min LR = max LR / 100)."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0.0)]
    steps: PositiveInt
    batch_size: PositiveInt
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.1
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    momentum: Fraction = 0.9
    grad_clip: Annotated[float, Field(ge=0.0)] = 1.0
    warmup_frac: Fraction = 0.2
    min_lr_ratio: Fraction = 0.01
    log_every: PositiveInt = 10
    eval_every: Annotated[int, Field(ge=0)] = 100
    checkpoint_every: Annotated[int, Field(ge=0)] = 0


class PretrainConfig(Strict):
    data: PretrainDataConfig = Field(default_factory=PretrainDataConfig)
    optim: OptimConfig | None = Field(None, description="required, except in the Tracr setting (compiled, not trained)")
    capability: TaskConfig = Field(
        default=TaskConfig(family=Family.counter, operand="a"),
        description="the pretraining capability tracked through fine-tuning (O_PT)",
    )


class FinetuneConfig(Strict):
    task: TaskConfig = Field(default=TaskConfig(family=Family.counter, operand="b"), description="O_FT task")
    spurious_fraction: Fraction = Field(0.0, description="C_Tr: share of examples with the planted relation")
    spurious_offset: int = Field(1, description="the relation: answer(FT) = answer(PT) + offset")
    optim: OptimConfig
    from_checkpoint: Path | None = None

    @field_validator("from_checkpoint")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file not found: {v}")
        return v


class EvalConfig(Strict):
    samples: PositiveInt = 2000
    seed: int = 1_000_003  # far from training seeds, so eval sets never overlap a training stream


class PruneConfig(Strict):
    """Pruning MLP units to revive the pretraining capability (paper App. D: 5-15 neurons suffice)."""

    ks: list[Annotated[int, Field(ge=0)]] = [0, 1, 2, 3, 5, 10, 15, 20, 30, 50]
    score_samples: PositiveInt = Field(1024, description="pretraining-task examples for the one-step score")
    random_controls: PositiveInt = Field(3, description="random rankings averaged for the control curve")
    learned_steps: PositiveInt = 300
    learned_lr: Annotated[float, Field(gt=0.0)] = 0.05
    learned_penalty: Annotated[float, Field(ge=0.0)] = 1.0
    learned_batch_size: PositiveInt = 256


class ProbeConfig(Strict):
    """Linear probes on the residual stream at the answer position (paper App. D)."""

    samples: PositiveInt = 4000
    test_frac: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25
    steps: PositiveInt = 1000
    lr: Annotated[float, Field(gt=0.0)] = 1e-3


class ReftConfig(Strict):
    """Reverse fine-tuning: train the fine-tuned model back on the pretraining capability. The
    paper uses the fine-tuning hyperparameters at a smaller LR; the Scr.+FT control gets the same
    protocol at this LR and at `control_lr_multiplier` times it."""

    steps: PositiveInt = 400
    lr: Annotated[float, Field(gt=0.0)] = 1e-4
    eval_every: PositiveInt = 20
    control_lr_multiplier: Annotated[float, Field(gt=0.0)] = 10.0


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
    prune: PruneConfig = Field(default_factory=PruneConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    reft: ReftConfig = Field(default_factory=ReftConfig)
    verdict: VerdictConfig = Field(default_factory=VerdictConfig)
    attention_prompts: PositiveInt = 4


class TrackingConfig(Strict):
    experiment: str = "wrapperdist"
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else ./mlflow.db")


class TracrConfig(Strict):
    """The Tracr setting (paper Sec. 4, App. E.3): "pretraining" compiles a RASP program into weights
    (needs the `tracr` extra); fine-tuning, analyses and reFT then run on those weights as on a GPT.
    The paper fine-tunes compiled models with SGD + momentum after adding N(0, 0.001) weight noise;
    here σ = 1e-3 already drops the compiled Counter to 0.88 accuracy (lengths ≤ 8), so the default is 1e-4."""

    program: Literal["counter", "max_identifier"] = "counter"
    tokens: list[str] = Field(default=["a", "b", "c"], min_length=2,
                              description="input tokens; for max_identifier their order defines max/min")
    pretrain_target: str = Field("a", description="compiled target; default: counter 'a', max_identifier 'max'")
    finetune_target: str = Field("b", description="fine-tuning target; default: counter 'b', max_identifier 'min'")
    min_len: PositiveInt = 1
    max_len: PositiveInt = 8
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
    def _targets(self) -> TracrConfig:
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


class StoriesConfig(Strict):
    """The TinyStories setting (paper Sec. 5.2, App. F): a small LM pretrained on stories with
    labelled features, fine-tuned to delete one (`feature`, the paper's Twist) with one of the
    paper's protocols, measured by a probe and by how often its generations have the feature, and
    revived by reFT on stories that have it. The corpus is the real TinyStories files at `path`
    (read locally, streamed) or, by default, the project's procedural stand-in."""

    path: Path | None = Field(None, description="TinyStories file or folder (.txt / .json); default: generated")
    format: Literal["auto", "plain", "instruct", "json"] = "auto"
    stories: PositiveInt = Field(20_000, description="generated corpus size, or how many real stories to read")
    corpus_seed: int = 0
    pretrain_share: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.8, description="share of the corpus for pretraining; the rest feeds fine-tuning and reFT (paper: 80/20)")
    eval_stories: PositiveInt = Field(400, description="held-out stories for losses, probes and prompts")
    vocab_size: Annotated[int, Field(ge=300)] = 1024
    seq_len: Annotated[int, Field(ge=32)] = 192
    feature: str = Field("Twist", description="the capability fine-tuning deletes")
    irrelevant_feature: str = Field("Foreshadowing", description="the label F+MM renames to `feature`")
    deletion: Literal["F", "F+AT", "F+MM"] = Field("F", description="the deletion fine-tuning's data (paper Tab. 1)")
    pretrain_without_feature: bool = Field(False, description="the 'Not in PT' control: pretrain with it filtered out")
    generation_prompts: PositiveInt = Field(48, description="prompts requesting the feature, per evaluation")
    max_new_tokens: PositiveInt = 160
    temperature: Annotated[float, Field(gt=0.0)] = 1.0
    top_k: PositiveInt | None = None

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.exists():
            raise ValueError(f"no such file or folder: {v}")
        return v


class ExperimentConfig(Strict):
    """One pretrain → fine-tune experiment."""

    name: str = "experiment"
    seed: int = 0
    torch_threads: PositiveInt | None = Field(None, description="default: the CPUs this process may use")
    output_dir: Path = Path("runs")
    progress: bool = True
    grammar: GrammarConfig = Field(default_factory=GrammarConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    tracr: TracrConfig | None = Field(None, description="set to run the Tracr setting instead of the PCFG one")
    stories: StoriesConfig | None = Field(None, description="set to run the TinyStories setting instead")

    @model_validator(mode="after")
    def _tasks_differ(self) -> ExperimentConfig:
        if self.tracr is not None and self.stories is not None:
            raise ValueError("tracr and stories are two settings: set at most one")
        if self.stories is not None:
            if self.pretrain.optim is None:
                raise ValueError("pretrain.optim: required (the stories setting pretrains a language model)")
            return self
        if self.tracr is not None:
            if self.finetune.spurious_fraction > 0:
                raise ValueError("finetune.spurious_fraction: the Tracr setting has no spurious correlation; use 0")
            return self
        if self.pretrain.optim is None:
            raise ValueError("pretrain.optim: required (only the Tracr setting, which compiles, may omit it)")
        if self.finetune.task == self.pretrain.capability:
            raise ValueError("finetune.task equals pretrain.capability; fine-tuning would change nothing")
        return self

    @property
    def is_tracr(self) -> bool:
        return self.tracr is not None


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
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: <top level>: expected a mapping of settings, got {type(data).__name__}")
    return data


def load_config(path: str | Path, model: type[M] = ExperimentConfig) -> M:  # type: ignore[assignment]
    """Read and validate a YAML file; raise ConfigError naming the file and every bad field."""
    data = read_yaml(path)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(path), err)) from None


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


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
