"""The Setting protocol: the one interface through which stages, analyses, the pipeline and the
sweep see an experimental setting (PCFG, Tracr, TinyStories, or one a researcher adds).

A setting owns its data, how a model is built (or compiled), how batches and evaluations are made,
which of its config fields shape pretraining, its control model and its analysis. Everything else —
the training loop, checkpoints, the stage DAG, executors, MLflow — is shared and knows only this
protocol. Adding a setting is one folder (a config section registered with `schema.register_section`
and a class implementing this protocol) and one `settings.registry.register` call."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from wrapperdist.config import ExperimentConfig
from wrapperdist.models.hooks import HookedModule
from wrapperdist.sink import Sink
from wrapperdist.train.distributed import IN_PROCESS, Distributed

if TYPE_CHECKING:
    from wrapperdist.memo import Memo

StageKind = Literal["pretrain", "finetune", "analysis", "reft"]
DataStage = Literal["pretrain", "finetune", "reft"]  # the stages that draw training batches
Batch = tuple[np.ndarray, np.ndarray]  # (inputs, targets) as the setting's loss_fn reads them
Evaluator = Callable[[torch.nn.Module], dict[str, float]]
LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalMetric:
    """A metric the setting's evaluator returns: `kind` 'share' (accuracy, rate; plotted 0-1) or
    'loss'. Evaluation points go out live (MLflow curves, ASHA) and make a curve's x-axis."""

    label: str
    kind: Literal["share", "loss"] = "share"


@dataclass(frozen=True)
class Runtime:
    """How a stage runs, not what it computes: never part of a stage's identity or config."""

    dist: Distributed = IN_PROCESS
    threads: int | None = None  # torch threads; default: the CPUs this process may use
    progress: bool = True  # tqdm bars
    # Where an in-process stage trains ("cpu", "cuda", "cuda:1"). Under Ray Train the DDP wrapper
    # places the model instead (use_gpu), and this stays "cpu".
    device: str = "cpu"
    # Where an analysis keeps the references it shares with the sweep's other analyses (the
    # sweep's stage store); None: compute them every time.
    memo: Memo | None = None

    def apply(self) -> None:
        torch.set_num_threads(self.threads or default_threads())


DEFAULT_RUNTIME = Runtime()  # in this process, all its CPUs, with progress bars


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class StageOutput:
    checkpoint: Path
    metrics: dict[str, float]


@dataclass
class AnalysisModels:
    pretrained: HookedModule  # the fine-tune's starting point
    finetuned: HookedModule
    control: HookedModule  # the setting's control (Scr.+FT, Not-in-PT), pretrained by `control_config`


class AnalysisResult(Protocol):
    """What a setting's analysis hands back: a verdict label, a Markdown report, figures and one
    number per line of evidence (logged on the analysis run, so every run carries every key)."""

    report: str
    figures: dict[str, Any]

    @property
    def label(self) -> str: ...

    def summary_metrics(self) -> dict[str, float]: ...


class Setting(Protocol):
    name: str
    eval_metrics: Mapping[str, EvalMetric]  # what `evaluator` returns
    revival_metric: str  # the eval metric a reFT curve follows (the pretraining capability)
    reft_eval_keys: tuple[str, ...] | None  # what reFT evaluates (None: all of eval_metrics)

    def build_model(self, cfg: ExperimentConfig) -> HookedModule:
        """A freshly initialised model to pretrain (the caller seeds torch)."""

    def loss_fn(self, cfg: ExperimentConfig, stage: DataStage) -> LossFn:
        """The training objective of `stage` (e.g. next-token in pretraining, the answer in fine-tuning)."""

    def compile(self, cfg: ExperimentConfig) -> HookedModule | None:
        """The pretrained model when pretraining is not training (Tracr compiles); None: train it."""

    def prepare_finetune(self, cfg: ExperimentConfig, model: HookedModule, source: str) -> None:
        """Check that `model` (from checkpoint `source`) fits this config's data; perturb it if the
        protocol says so. Runs after torch is seeded with cfg.seed."""

    def batches(self, cfg: ExperimentConfig, stage: DataStage, batch_size: int, dist: Distributed = IN_PROCESS,
                stream_id: int = 0) -> Iterator[Batch]:
        """The endless, seeded training stream of `stage` (reFT: the pretraining capability);
        each data-parallel worker draws its own shard of `batch_size`."""

    def evaluator(self, cfg: ExperimentConfig, keys: tuple[str, ...] | None = None) -> Evaluator:
        """Fixed held-out evaluation (all of `eval_metrics`, or only `keys`)."""

    def floors(self, cfg: ExperimentConfig, model: HookedModule) -> dict[str, float]:
        """What each evaluation metric must beat (e.g. `floor.modal.pt_acc`), logged at step 0 of
        pretraining and fine-tuning; `model` gives the shape of the random-init floor. May be {}."""

    def checkpoint_meta(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """What a checkpoint must carry beyond weights and config (e.g. the tokenizer)."""

    def control_label(self, cfg: ExperimentConfig) -> str:
        """What the control model is called in reports and run names (e.g. "Scr.+FT control")."""

    def control_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The control model's experiment (Scr.+FT, Not-in-PT): pretrained once, reFT'd in analysis."""

    def pretrain_identity(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """Everything that determines the pretrained model (its content hash)."""

    def finetune_identity(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """Everything beyond pretraining that determines the fine-tuned model."""

    def run_label(self, cfg: ExperimentConfig, kind: StageKind) -> str:
        """The condition a run stands for, for its MLflow run name: the pretraining condition for a
        pretrain (e.g. `prior=medium seed=1`), the fine-tuning one otherwise (`lr=0.0003 C_Tr=0.5 ...`)."""

    def describe(self, cfg: ExperimentConfig) -> str:
        """One line for reports: what was fine-tuned from what."""

    def analyze(self, cfg: ExperimentConfig, models: AnalysisModels, sink: Sink, runtime: Runtime) -> AnalysisResult:
        """The analysis stage of one fine-tune."""


@dataclass
class Sample:
    """One generated continuation: the prompt as the model saw it, the text, and what it contains."""

    prompt: str
    text: str
    found: tuple[str, ...]  # the setting's labels detected in the text (e.g. story features)


@runtime_checkable
class TextGenerating(Protocol):
    """A setting whose models write text (`wrapperdist generate`): not every setting's do."""

    def generate(self, model: HookedModule, meta: dict[str, Any], prompt: str, features: list[str], samples: int,
                 max_new_tokens: int, temperature: float, top_k: int | None, seed: int) -> list[Sample]: ...
