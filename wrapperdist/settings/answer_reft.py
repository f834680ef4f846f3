"""reFT in the analysis of an answer setting: the fine-tuned model against the setting's control at
the same LR and a higher one, and Scr. (a random init). The controls' curves depend only on their
start weights, the reFT optimiser, the seed and the data, so they are computed once per sweep and
replayed (`wrapperdist.memo`)."""

from __future__ import annotations

import copy
import hashlib

import numpy as np

from wrapperdist.config import ExperimentConfig
from wrapperdist.memo import memoised, weights_digest
from wrapperdist.models import HookedModule
from wrapperdist.setting import Evaluator, Runtime
from wrapperdist.settings.answer_data import AnswerSettingLike
from wrapperdist.sink import MemorySink, PrefixSink, Sink
from wrapperdist.stages import reft_lr, reft_optim, run_reft

REFT_KEYS = ("finetuned", "control", "control_high_lr", "random_init")  # the reFT curves, in order


def _reft_data_digest(setting: AnswerSettingLike, cfg: ExperimentConfig) -> str:
    """What a reFT run reads, by content: its first training batches, its held-out sets and its loss.
    A control's curve depends on nothing else of the fine-tune (prior, C_Tr, FT LR), so analyses
    that differ only there share it."""
    digest = hashlib.sha256(setting.name.encode())
    loss = setting.loss_fn(cfg, "reft")
    digest.update(getattr(loss, "__qualname__", repr(loss)).encode())
    stream = setting.batches(cfg, "reft", cfg.finetune.optim.batch_size)
    arrays = [a for _ in range(2) for a in next(stream)]
    held_out = setting.eval_tensors(cfg)
    arrays += [t.numpy() for key in sorted(held_out) if key in (setting.reft_eval_keys or held_out)
               for t in held_out[key]]
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _shared_reft(setting: AnswerSettingLike, cfg: ExperimentConfig, model: HookedModule, lr: float, sink: Sink,
                 runtime: Runtime, evaluate: Evaluator, desc: str, data_digest: str) -> list[tuple[int, float]]:
    """reFT of a control (Scr.+FT, Scr.): a pure function of its start weights, the reFT optimiser,
    the seed and the data, so the analyses of a sweep that share a control (every prior, C_Tr and
    FT LR of a seed, for equal reFT LRs) compute it once (`wrapperdist.memo`) and each replays its
    metrics into its own run."""
    key = {"weights": weights_digest(model), "optim": reft_optim(cfg, lr).model_dump(mode="json"),
           "seed": cfg.seed, "data": data_digest}

    def compute() -> list[tuple[int, dict[str, float]]]:
        memory = MemorySink()
        run_reft(setting, cfg, model, lr, memory, runtime, evaluate=evaluate, desc=desc)
        return memory.metrics

    history = memoised(runtime.memo, "reft-control", key, compute)
    for step, metrics in history:
        sink.log_metrics(metrics, step)
    return [(step, m[setting.revival_metric]) for step, m in history if setting.revival_metric in m]


def reft_curves(setting: AnswerSettingLike, cfg: ExperimentConfig, reft_model: HookedModule, control: HookedModule,
                random_init: HookedModule, evaluate: Evaluator, sink: Sink,
                runtime: Runtime) -> dict[str, list[tuple[int, float]]]:
    """reFT of the fine-tuned model (in place) vs the control at the same LR and at a higher one, and
    Scr. (a random init trained on the pretraining capability alone, paper App. E.4); keys are the
    curves' labels, in the order of `REFT_KEYS`. The three control curves are shared (memoised)."""
    lr, multiplier = reft_lr(cfg), cfg.analysis.reft.control_lr_multiplier
    name = setting.control_label(cfg)
    data_digest = _reft_data_digest(setting, cfg)
    curves = {f"fine-tuned → reFT (lr {lr:g})": run_reft(
        setting, cfg, reft_model, lr, PrefixSink(sink, f"reft.{REFT_KEYS[0]}."), runtime, evaluate=evaluate,
        desc="reFT fine-tuned")}
    controls = ((f"{name} (lr {lr:g})", control, lr, "reFT control"),
                (f"{name} (lr {lr * multiplier:g})", control, lr * multiplier, "reFT control, high lr"),
                (f"Scr., random init (lr {lr:g})", random_init, lr, "reFT random init"))
    if not cfg.analysis.reft.scratch:
        controls = controls[:2]
    for key, (label, model, rate, desc) in zip(REFT_KEYS[1:], controls, strict=False):
        curves[label] = _shared_reft(setting, cfg, copy.deepcopy(model), rate, PrefixSink(sink, f"reft.{key}."),
                                      runtime, evaluate, desc, data_digest)
    return curves
