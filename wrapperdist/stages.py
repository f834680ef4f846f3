"""Stages: one function per step of the pipeline — pretrain, fine-tune, reFT — wiring a setting's
data and model to the plain training loop, reporting through a sink. A stage is a function of
(config, input checkpoint) → (checkpoint, metrics); it knows nothing of who runs it (CLI, Ray
Tune, Ray Train) or where metrics go (MLflow, memory), and nothing of which setting it runs:
every setting-specific step is a call on the `Setting`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wrapperdist.config import ExperimentConfig, OptimConfig
from wrapperdist.models import HookedModule, load_model, model_meta
from wrapperdist.setting import DEFAULT_RUNTIME, Evaluator, Runtime, Setting, StageKind, StageOutput
from wrapperdist.sink import MemorySink, Sink, TeeSink
from wrapperdist.train import save_checkpoint, train


def checkpoint_meta(setting: Setting, cfg: ExperimentConfig, model: HookedModule, stage: str) -> dict[str, Any]:
    return {"stage": stage, **model_meta(model), "config": cfg.model_dump(mode="json"),
            **setting.checkpoint_meta(cfg)}


def run_pretrain(setting: Setting, cfg: ExperimentConfig, out_dir: Path, sink: Sink,
                 runtime: Runtime = DEFAULT_RUNTIME) -> StageOutput:
    """Pretrain from scratch on the setting's pretraining data, or take its compiled model."""
    runtime.apply()
    dist = runtime.dist
    compiled = setting.compile(cfg)
    if compiled is not None:  # not training: evaluate and save the program's weights
        metrics = setting.evaluator(cfg)(compiled)
        sink.log_metrics({"num_params": float(compiled.num_params()), **metrics}, 0)
        sink.log_metrics(setting.floors(cfg, compiled), 0)
        meta = checkpoint_meta(setting, cfg, compiled, "pretrain")
        path = save_checkpoint(Path(out_dir) / "model.pt", compiled, meta)
        return StageOutput(path, metrics)
    optim = cfg.pretrain.optim
    assert optim is not None  # ExperimentConfig requires it wherever the setting trains
    torch.manual_seed(cfg.seed)  # same init on every worker (DDP also broadcasts rank 0's weights)
    model = setting.build_model(cfg).to(runtime.device)
    if dist.is_main:
        sink.log_metrics({"num_params": float(model.num_params())}, 0)
        sink.log_metrics(setting.floors(cfg, model), 0)  # leaves torch's RNG as it was: training is unchanged
    result = train(
        dist.wrap(model), setting.batches(cfg, "pretrain", optim.batch_size, dist), optim, sink,
        evaluate=setting.evaluator(cfg), checkpoint_path=Path(out_dir) / "model.pt",
        checkpoint_meta=checkpoint_meta(setting, cfg, model, "pretrain"), is_main=dist.is_main,
        desc=f"pretrain {cfg.name}", progress=runtime.progress, loss_fn=setting.loss_fn(cfg, "pretrain"),
    )
    return StageOutput(result.checkpoint, result.final_metrics)


def run_finetune(setting: Setting, cfg: ExperimentConfig, init_checkpoint: Path, out_dir: Path, sink: Sink,
                 runtime: Runtime = DEFAULT_RUNTIME) -> StageOutput:
    """Fine-tune a pretrained checkpoint on the setting's fine-tuning data."""
    runtime.apply()
    dist = runtime.dist
    model, meta = load_model(init_checkpoint)
    if dist.is_main:  # on the fine-tune run too, which the sweep's tables read
        sink.log_metrics(setting.floors(cfg, model), 0)
    torch.manual_seed(cfg.seed)
    setting.prepare_finetune(cfg, model, str(init_checkpoint))
    model.to(runtime.device)
    optim = cfg.finetune.optim
    result = train(
        dist.wrap(model), setting.batches(cfg, "finetune", optim.batch_size, dist), optim, sink,
        evaluate=setting.evaluator(cfg), checkpoint_path=Path(out_dir) / "model.pt",
        checkpoint_meta={**checkpoint_meta(setting, cfg, model, "finetune"), "parent_stage": meta.get("stage")},
        is_main=dist.is_main, desc=f"finetune {cfg.name}", progress=runtime.progress,
        loss_fn=setting.loss_fn(cfg, "finetune"),
    )
    return StageOutput(result.checkpoint, result.final_metrics)


def reft_optim(cfg: ExperimentConfig, lr: float, steps: int | None = None) -> OptimConfig:
    """The paper's reFT protocol: fine-tuning's hyperparameters, at another (smaller) LR."""
    r = cfg.analysis.reft
    return cfg.finetune.optim.model_copy(update={"lr": lr, "steps": steps or r.steps, "eval_every": r.eval_every,
                                                 "checkpoint_every": 0})


def reft_lr(cfg: ExperimentConfig) -> float:
    """reFT's learning rate: `lr_factor` × the fine-tuning LR where given, else `lr`."""
    return cfg.analysis.reft.effective_lr(cfg.finetune.optim.lr)


def run_reft(setting: Setting, cfg: ExperimentConfig, model: HookedModule, lr: float, sink: Sink,
             runtime: Runtime = DEFAULT_RUNTIME, steps: int | None = None, evaluate: Evaluator | None = None,
             desc: str = "reft") -> list[tuple[int, float]]:
    """Reverse fine-tune `model` (in place) on the pretraining capability for `steps` (default
    analysis.reft.steps) at `lr`; returns the curve of the setting's revival metric. `evaluate`:
    an evaluator the caller already built (an analysis runs several reFTs on the same sets)."""
    runtime.apply()
    dist = runtime.dist
    memory = MemorySink()
    optim = reft_optim(cfg, lr, steps)
    evaluate = evaluate or setting.evaluator(cfg, setting.reft_eval_keys)
    torch.manual_seed(cfg.seed)
    train(dist.wrap(model), setting.batches(cfg, "reft", optim.batch_size, dist), optim, TeeSink(sink, memory),
          evaluate=evaluate, is_main=dist.is_main, desc=desc, progress=runtime.progress,
          loss_fn=setting.loss_fn(cfg, "reft"))
    return memory.history(setting.revival_metric)


def run_stage(kind: StageKind, setting: Setting, cfg: ExperimentConfig, init: Path | None, out_dir: Path, sink: Sink,
              runtime: Runtime = DEFAULT_RUNTIME, budget: int | None = None) -> dict[str, float]:
    """The one dispatch of a training stage by kind (in-process, Tune trial or Ray Train worker);
    leaves model.pt in out_dir (on the main worker) and returns the final metrics."""
    if kind == "pretrain":
        return run_pretrain(setting, cfg, out_dir, sink, runtime).metrics
    if init is None:
        raise ValueError(f"a {kind} stage needs an input checkpoint")
    if kind == "finetune":
        return run_finetune(setting, cfg, init, out_dir, sink, runtime).metrics
    if kind != "reft":
        raise ValueError(f"{kind} is not a training stage")
    model, meta = load_model(init)
    memory = MemorySink()
    run_reft(setting, cfg, model, reft_lr(cfg), TeeSink(sink, memory), runtime, steps=budget,
             desc=f"reft {budget}")
    if runtime.dist.is_main:
        save_checkpoint(Path(out_dir) / "model.pt", model, {**meta, "stage": "reft", "budget": budget})
    last = max((step for step, _ in memory.metrics), default=0)
    return {k: v for step, m in memory.metrics if step == last for k, v in m.items()}
