"""The data interface of settings whose examples are (tokens, answer), the answer predicted at the
last position: which examples a stage draws, and the seeded streams they come in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, Protocol

import numpy as np
import torch

from wrapperdist.config import ExperimentConfig
from wrapperdist.setting import Batch, DataStage, Setting

# capability: the pretraining capability (O_PT) alone; target: the fine-tuning task, both on plain
# data (the held-out C_Te = 0 sets exclude the planted relation; these streams do not); finetune: the
# fine-tuning distribution (with the setting's planted correlation, C_Tr); pretrain: the pretraining
# distribution.
Which = Literal["capability", "target", "finetune", "pretrain"]
STREAMS = {"pretrain": 1, "finetune": 2, "reft": 3}  # distinct seed streams per stage
TRAINING_DATA: dict[DataStage, Which] = {"pretrain": "pretrain", "finetune": "finetune", "reft": "capability"}


class AnswerTasks(Protocol):
    """A setting's data, built once per stream or evaluation. Optionally also
    `relation_holds(tokens) -> bool array | None`: per encoded example, whether the setting's planted
    relation holds (the relation floors, `settings/floors.py`); a setting without one leaves it out."""

    def batch(self, which: Which, n: int, rng: np.random.Generator) -> Batch: ...

    def eval_sets(self, n: int, rng: np.random.Generator) -> dict[str, Batch]:
        """The held-out sets, named as the setting's eval_metrics (at least pt_acc and ft_acc)."""
        ...

    def answer_classes(self) -> int:
        """How many classes a probe of the answer predicts."""
        ...

    def answer_class(self, answers: Any) -> Any:
        """Answer tokens (a tensor) -> probe class ids 0..answer_classes()-1."""
        ...

    def decode(self, token: int) -> str: ...

    def diagnose(self, model: Any) -> dict[str, float]:
        """Setting-specific numbers about a fine-tuned model's answers, logged by the analysis (may be {})."""
        ...


def stream(make_batch, seed: tuple[int, ...]) -> Iterator[Batch]:
    """An endless, seeded stream of batches: `make_batch(rng)` is called once per batch. The tuple
    seed (experiment seed, stage, [stream,] worker rank) gives independent streams per stage and worker."""
    rng = np.random.default_rng(seed)
    while True:
        yield make_batch(rng)


class AnswerSettingLike(Setting, Protocol):
    """What the shared analysis needs of an answer setting: the protocol, plus its data."""

    analysis_eval_keys: tuple[str, ...]
    eval_metrics: Any
    pruning_unit: str  # "rows" or "weights"

    def tasks(self, cfg: ExperimentConfig) -> AnswerTasks: ...

    def eval_tensors(self, cfg: ExperimentConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]: ...
