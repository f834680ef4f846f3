"""The shared half of settings whose examples are (tokens, answer), the answer predicted at the last
position (PCFG, Tracr, and any task of that shape): training streams, held-out accuracy, the answer
loss, and the analysis. A subclass says how to make its data (`tasks`) and its model; everything
else here is the same for all of them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from wrapperdist.config import ExperimentConfig
from wrapperdist.identity import default_finetune_identity, default_pretrain_identity
from wrapperdist.setting import (
    AnalysisModels,
    AnalysisResult,
    Batch,
    DataStage,
    EvalMetric,
    Evaluator,
    LossFn,
    Runtime,
    StageKind,
)
from wrapperdist.settings.answer_analysis import analyze_answers
from wrapperdist.settings.answer_data import STREAMS, TRAINING_DATA, AnswerTasks, Which, stream
from wrapperdist.settings.floors import answer_floors, fresh_model, random_init_seed
from wrapperdist.sink import Sink
from wrapperdist.train import answer_accuracy, loss_on_batch
from wrapperdist.train.distributed import IN_PROCESS, Distributed


class AnswerSetting:
    """Implements the `Setting` protocol, less what a subclass supplies: `name`, `eval_metrics`,
    `tasks`, `build_model`, `control_config`, `run_label`, `describe` and (optionally) `compile`,
    `prepare_finetune`, the identities."""

    name: str
    eval_metrics: Mapping[str, EvalMetric]
    revival_metric = "pt_acc"
    reft_eval_keys: tuple[str, ...] | None = ("pt_acc", "ft_acc")
    analysis_eval_keys: tuple[str, ...] = ("pt_acc", "ft_acc")  # what pruning curves evaluate
    pruning_unit = "rows"  # the paper's unit for trained models (App. D): a row of a weight matrix

    def tasks(self, cfg: ExperimentConfig) -> AnswerTasks:
        raise NotImplementedError

    def loss_fn(self, cfg: ExperimentConfig, stage: DataStage) -> LossFn:
        return loss_on_batch  # the answer, at the last position

    def compile(self, cfg: ExperimentConfig):
        return None

    def layout(self, cfg: ExperimentConfig) -> tuple[int, int]:
        """(vocabulary size, context length) of this config's encoded examples."""
        raise NotImplementedError

    def prepare_finetune(self, cfg: ExperimentConfig, model: Any, source: str) -> None:
        """The pretrained model must read this config's data: same vocabulary and context."""
        vocab_size, seq_len = self.layout(cfg)
        if (model.shape.vocab_size, model.shape.seq_len) != (vocab_size, seq_len):
            raise ValueError(f"{source}: model has vocab {model.shape.vocab_size} / seq_len {model.shape.seq_len}, "
                             f"but this config's data needs {vocab_size} / {seq_len} (window or vocabulary differs?)")

    def build_model(self, cfg: ExperimentConfig) -> Any:
        raise NotImplementedError

    def batches(self, cfg: ExperimentConfig, stage: DataStage, batch_size: int, dist: Distributed = IN_PROCESS,
                stream_id: int = 0) -> Iterator[Batch]:
        tasks, n, which = self.tasks(cfg), dist.shard(batch_size), TRAINING_DATA[stage]
        # reFT streams are numbered: the analysis draws a second one (stream 1) for the learned mask
        numbered = (stream_id,) if stage == "reft" else ()
        return stream(lambda rng: tasks.batch(which, n, rng), seed=(cfg.seed, STREAMS[stage], *numbered, dist.rank))

    def eval_tensors(self, cfg: ExperimentConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Fixed held-out sets, the same for every stage of an experiment."""
        raw = self.tasks(cfg).eval_sets(cfg.eval.samples, np.random.default_rng(cfg.eval.seed))
        return {k: (torch.from_numpy(t), torch.from_numpy(a)) for k, (t, a) in raw.items()}

    def evaluator(self, cfg: ExperimentConfig, keys: tuple[str, ...] | None = None) -> Evaluator:
        sets = self.eval_tensors(cfg)
        if keys is not None:  # the keys this config's data have (e.g. no C_Te = 1 set for the indexer)
            sets = {k: sets[k] for k in keys if k in sets}

        def evaluate(model: torch.nn.Module) -> dict[str, float]:
            return {name: answer_accuracy(model, tokens, answers) for name, (tokens, answers) in sets.items()}

        return evaluate

    def floors(self, cfg: ExperimentConfig, model: torch.nn.Module) -> dict[str, float]:
        """The floors of every held-out set (`settings/floors.py`): the modal answer, the planted
        relation's rate (where the tasks define `relation_holds`) and a random init shaped like `model`."""
        relation = getattr(self.tasks(cfg), "relation_holds", None)  # optional: a plug-in's tasks may plant none
        return answer_floors(self.eval_tensors(cfg), relation, fresh_model(model, random_init_seed(cfg)))

    def checkpoint_meta(self, cfg: ExperimentConfig) -> dict[str, Any]:
        return {}

    def pretrain_identity(self, cfg: ExperimentConfig) -> dict[str, Any]:
        return default_pretrain_identity(cfg)

    def finetune_identity(self, cfg: ExperimentConfig) -> dict[str, Any]:
        return default_finetune_identity(cfg)

    def run_label(self, cfg: ExperimentConfig, kind: StageKind) -> str:
        raise NotImplementedError

    def describe(self, cfg: ExperimentConfig) -> str:
        raise NotImplementedError

    def analyze(self, cfg: ExperimentConfig, models: AnalysisModels, sink: Sink, runtime: Runtime) -> AnalysisResult:
        return analyze_answers(self, cfg, models, sink, runtime)


__all__ = ["AnswerSetting", "AnswerTasks", "Which", "stream"]  # what a setting built on this base needs
