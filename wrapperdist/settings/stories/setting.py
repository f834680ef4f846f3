"""The TinyStories setting (paper Sec. 5.2, App. F): pretrain a small LM on stories with labelled
features, delete one feature by fine-tuning, revive it by reFT. Same loop, sinks and checkpoints as
the other settings; the tokenizer travels inside every checkpoint's metadata, so an analysis or
`wrapperdist generate` reads it from there."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tokenizers import Tokenizer

from wrapperdist.config import ExperimentConfig
from wrapperdist.identity import default_finetune_identity, default_pretrain_identity
from wrapperdist.models import GPT, GPTShape, HookedModule
from wrapperdist.setting import (
    AnalysisModels,
    Batch,
    DataStage,
    EvalMetric,
    Evaluator,
    LossFn,
    Runtime,
    Sample,
    StageKind,
)
from wrapperdist.settings.stories.analysis import StoriesAnalysisOutput, analyze_stories
from wrapperdist.settings.stories.config import StoriesSection
from wrapperdist.settings.stories.lm import (
    batch_stream,
    build_corpus,
    build_tokenizer,
    encode,
    lm_loss,
    make_story_evaluator,
    protocol_records,
)
from wrapperdist.settings.stories.records import to_text
from wrapperdist.settings.stories.sampling import build_prompt, generate_samples
from wrapperdist.sink import Sink
from wrapperdist.train.distributed import IN_PROCESS, Distributed

STREAMS = {"pretrain": 11, "finetune": 12, "reft": 13}



def tokenizer_of(meta: dict) -> Tokenizer:
    if "tokenizer" not in meta:
        raise ValueError("this checkpoint has no tokenizer: not a stories-setting model")
    return Tokenizer.from_str(meta["tokenizer"])


class StoriesSetting:
    name = "stories"
    eval_metrics = {
        "twist_rate": EvalMetric("generations with the feature (prompted for it; copy-free)"),
        "loss_twist": EvalMetric("held-out, with the feature", "loss"),
        "loss_plain": EvalMetric("held-out, without it", "loss"),
    }
    revival_metric = "twist_rate"
    reft_eval_keys = None

    def _shape(self, cfg: ExperimentConfig) -> GPTShape:
        s = StoriesSection.of(cfg)
        return GPTShape.of(cfg.model, build_tokenizer(s).get_vocab_size(), s.seq_len)

    def control_label(self, cfg: ExperimentConfig) -> str:
        return "Not-in-PT control"

    def build_model(self, cfg: ExperimentConfig) -> GPT:
        return GPT(self._shape(cfg))

    def loss_fn(self, cfg: ExperimentConfig, stage: DataStage) -> LossFn:
        return lm_loss  # next-token on the story text, in every stage

    def compile(self, cfg: ExperimentConfig) -> None:
        return None

    def prepare_finetune(self, cfg: ExperimentConfig, model: HookedModule, source: str) -> None:
        want = self._shape(cfg)
        if (model.shape.vocab_size, model.shape.seq_len) != (want.vocab_size, want.seq_len):
            raise ValueError(f"{source}: model has vocab {model.shape.vocab_size} / seq_len {model.shape.seq_len}; "
                             f"this config's tokenizer and context need {want.vocab_size} / {want.seq_len}")

    def batches(self, cfg: ExperimentConfig, stage: DataStage, batch_size: int, dist: Distributed = IN_PROCESS,
                stream_id: int = 0) -> Iterator[Batch]:
        s = StoriesSection.of(cfg)
        records = protocol_records(s, stage, build_corpus(s), seed=cfg.seed)
        tokens, targets = encode(build_tokenizer(s), [to_text(r) for r in records], s.seq_len)
        return batch_stream(tokens, targets, dist.shard(batch_size), (cfg.seed, STREAMS[stage], stream_id, dist.rank))

    def evaluator(self, cfg: ExperimentConfig, keys: tuple[str, ...] | None = None) -> Evaluator:
        s = StoriesSection.of(cfg)
        evaluate = make_story_evaluator(s, build_tokenizer(s), build_corpus(s), seed=cfg.eval.seed)
        if keys is None:
            return evaluate
        return lambda model: {k: v for k, v in evaluate(model).items() if k in keys}

    def floors(self, cfg: ExperimentConfig, model: HookedModule) -> dict[str, float]:
        return {}  # generation rates and losses: no answer set whose modal answer or relation means anything

    def checkpoint_meta(self, cfg: ExperimentConfig) -> dict[str, Any]:
        return {"tokenizer": build_tokenizer(StoriesSection.of(cfg)).to_str()}

    def control_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The paper's "Not in PT" model: pretrained with the feature's stories filtered out."""
        without = StoriesSection.of(cfg).model_copy(update={"pretrain_without_feature": True})
        return cfg.model_copy(update={"name": f"{cfg.name}-not-in-pt", "setting": without})

    def pretrain_identity(self, cfg: ExperimentConfig) -> dict[str, Any]:
        return default_pretrain_identity(cfg)

    def finetune_identity(self, cfg: ExperimentConfig) -> dict[str, Any]:
        return default_finetune_identity(cfg)

    def run_label(self, cfg: ExperimentConfig, kind: StageKind) -> str:
        s = StoriesSection.of(cfg)
        corpus = f"stories without {s.feature}" if s.pretrain_without_feature else "stories"
        pretrained = f"{corpus} seed={cfg.seed}"
        if kind == "pretrain":
            return pretrained
        return f"lr={cfg.finetune.optim.lr:g} delete={s.feature} by={s.deletion} {pretrained}"

    def describe(self, cfg: ExperimentConfig) -> str:
        s = StoriesSection.of(cfg)
        return f"deletion of {s.feature!r} by {s.deletion}; corpus: {s.path or 'generated'} ({s.stories} stories)"

    def analyze(self, cfg: ExperimentConfig, models: AnalysisModels, sink: Sink,
                runtime: Runtime) -> StoriesAnalysisOutput:
        return analyze_stories(self, cfg, models, sink, runtime)

    def generate(self, model: HookedModule, meta: dict[str, Any], prompt: str, features: list[str], samples: int,
                 max_new_tokens: int, temperature: float, top_k: int | None, seed: int) -> list[Sample]:
        """Continue `prompt` (asking for `features` in the Instruct format the model was trained on)."""
        return generate_samples(model, tokenizer_of(meta), build_prompt(prompt, features), samples, max_new_tokens,
                                temperature, top_k, seed)
