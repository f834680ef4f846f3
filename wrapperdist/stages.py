"""Stages: wire data, model and the training loop for one step of the pipeline, reporting through
a sink. A stage is a function of (config, input checkpoint) → (checkpoint, metrics); it knows nothing
of who runs it (CLI, Ray) or where metrics go (MLflow, memory)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from wrapperdist.config import ExperimentConfig, OptimConfig, TaskConfig, default_threads
from wrapperdist.data import Family, PCFGTasks, TaskSpec, make_grammar, stream
from wrapperdist.models import GPT, GPTShape
from wrapperdist.models.tracr_model import TracrShape, TracrTransformer
from wrapperdist.sink import MemorySink, Sink, TeeSink
from wrapperdist.tracr import TracrTarget, TracrTasks
from wrapperdist.tracr.tasks import tracr_vocab
from wrapperdist.train import answer_accuracy, load_checkpoint, train
from wrapperdist.train.checkpoint import save_checkpoint
from wrapperdist.train.distributed import IN_PROCESS, Distributed

Tasks = PCFGTasks | TracrTasks
Model = GPT | TracrTransformer

PRETRAIN_STREAM, FINETUNE_STREAM, REFT_STREAM = 1, 2, 3  # distinct seed streams per stage


@dataclass
class StageOutput:
    checkpoint: Path
    metrics: dict[str, float]


def task_spec(task: TaskConfig) -> TaskSpec:
    return TaskSpec(family=task.family, operand=task.operand)


def pt_task(cfg: ExperimentConfig) -> TaskSpec | TracrTarget:
    """The pretraining capability tracked through fine-tuning (O_PT, or the compiled target)."""
    if cfg.tracr is not None:
        return TracrTarget(cfg.tracr.program, cfg.tracr.pretrain_target)
    return task_spec(cfg.pretrain.capability)


def ft_task(cfg: ExperimentConfig) -> TaskSpec | TracrTarget:
    if cfg.tracr is not None:
        return TracrTarget(cfg.tracr.program, cfg.tracr.finetune_target)
    return task_spec(cfg.finetune.task)


def describe_tasks(cfg: ExperimentConfig) -> str:
    """One line for reports: what was fine-tuned from what."""
    if cfg.tracr is not None:
        t = cfg.tracr
        return (f"Tracr {t.program} compiled for {t.pretrain_target!r}, fine-tuned toward {t.finetune_target!r} "
                f"(tokens {t.tokens}, lengths {t.min_len}-{t.max_len}, weight noise {t.noise_std:g})")
    return (f"{cfg.finetune.task.family}({cfg.finetune.task.operand}), C_Tr = {cfg.finetune.spurious_fraction}, "
            f"pretraining prior {cfg.pretrain.data.prior}")


def build_tasks(cfg: ExperimentConfig) -> Tasks:
    if cfg.tracr is not None:
        t = cfg.tracr
        return TracrTasks(tracr_vocab(t.program, t.tokens, t.max_len), t.tokens, t.min_len, t.max_len)
    g = cfg.grammar
    grammar = make_grammar(
        g.seed, g.levels, g.symbols_per_level, g.rules_per_symbol, g.rhs_len, g.terminal_rhs_len
    )
    return PCFGTasks(grammar, g.min_len, g.max_len, g.index_k)


def model_shape(cfg: ExperimentConfig, tasks: PCFGTasks) -> GPTShape:
    m = cfg.model
    return GPTShape(
        vocab_size=tasks.vocab.size, seq_len=tasks.seq_len, n_layer=m.n_layer, n_head=m.n_head,
        d_model=m.d_model, d_mlp=m.d_mlp or 4 * m.d_model, dropout=m.dropout,
    )


def load_model(path: str | Path) -> tuple[Model, dict]:
    state, meta = load_checkpoint(path)
    if meta.get("arch") == "tracr":
        model: Model = TracrTransformer(TracrShape(**meta["shape"]))
    else:
        model = GPT(GPTShape(**meta["shape"]))
    model.load_state_dict(state)
    return model, meta


def random_like(model: Model, seed: int) -> Model:
    """A freshly initialised model of the same architecture (the analyses' random-init control).
    Saved buffers (the Tracr read-out) are kept: they are part of the architecture, not learned."""
    torch.manual_seed(seed)
    fresh = type(model)(model.shape)
    saved = set(fresh.state_dict())
    fresh.load_state_dict({n: b for n, b in model.named_buffers() if n in saved}, strict=False)
    return fresh


def set_threads(cfg: ExperimentConfig) -> int:
    threads = cfg.torch_threads or default_threads()
    torch.set_num_threads(threads)
    return threads


def pretrain_batches(cfg: ExperimentConfig, tasks: PCFGTasks, dist: Distributed = IN_PROCESS):
    """The pretraining stream; each data-parallel worker draws its own shard (seeded by rank)."""
    data = cfg.pretrain.data
    weights = {Family(f): w for f, w in data.families.items()}
    prior = np.array(data.prior_vector())
    batch = dist.shard(cfg.pretrain.optim.batch_size)
    make = partial(tasks.mixture_batch, batch, family_weights=weights, prior=prior)
    return stream(lambda rng: make(rng), seed=(cfg.seed, PRETRAIN_STREAM, dist.rank))


def finetune_batches(cfg: ExperimentConfig, tasks: Tasks, dist: Distributed = IN_PROCESS):
    ft = cfg.finetune
    make = partial(
        tasks.task_batch, dist.shard(ft.optim.batch_size), task=ft_task(cfg),
        spurious_fraction=ft.spurious_fraction, partner=pt_task(cfg), offset=ft.spurious_offset,
    )
    return stream(lambda rng: make(rng), seed=(cfg.seed, FINETUNE_STREAM, dist.rank))


def eval_sets(cfg: ExperimentConfig, tasks: Tasks) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fixed held-out sets, the same for every stage of an experiment:
    pt_acc            the pretraining capability (count O_PT), no spurious correlation
    ft_acc            the fine-tuning task (count O_FT), C_Te = 0
    ft_acc_spurious   the fine-tuning task on strings where the planted relation holds, C_Te = 1
    mix_acc           the whole pretraining mixture"""
    rng = np.random.default_rng(cfg.eval.seed)
    n = cfg.eval.samples
    pt, ft = pt_task(cfg), ft_task(cfg)
    if isinstance(tasks, TracrTasks):  # no spurious relation, no pretraining mixture
        raw = {"pt_acc": tasks.task_batch(n, rng, pt), "ft_acc": tasks.task_batch(n, rng, ft)}
        return {k: (torch.from_numpy(t), torch.from_numpy(a)) for k, (t, a) in raw.items()}
    data = cfg.pretrain.data
    raw = {
        "pt_acc": tasks.task_batch(n, rng, pt),
        "ft_acc": tasks.task_batch(n, rng, ft),
        "ft_acc_spurious": tasks.task_batch(n, rng, ft, 1.0, pt, cfg.finetune.spurious_offset),
        "mix_acc": tasks.mixture_batch(
            n, rng, {Family(f): w for f, w in data.families.items()}, np.array(data.prior_vector())
        ),
    }
    return {k: (torch.from_numpy(t), torch.from_numpy(a)) for k, (t, a) in raw.items()}


def make_evaluator(sets: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return {name: answer_accuracy(model, tokens, answers) for name, (tokens, answers) in sets.items()}

    return evaluate


def _meta(cfg: ExperimentConfig, shape: GPTShape | TracrShape, stage: str) -> dict:
    arch = "tracr" if isinstance(shape, TracrShape) else "gpt"
    return {"stage": stage, "arch": arch, "shape": shape.to_dict(), "config": cfg.model_dump(mode="json")}


def compile_tracr(cfg: ExperimentConfig, out_dir: Path, sink: Sink) -> StageOutput:
    """The Tracr setting's "pretraining": compile the RASP program and convert it to torch, exact
    (the weight noise of the paper's protocol is added when fine-tuning starts)."""
    from wrapperdist.tracr.compile import compile_target, to_torch  # JAX: only here, only for Tracr

    assert cfg.tracr is not None
    t = cfg.tracr
    compiled = compile_target(TracrTarget(t.program, t.pretrain_target), t.tokens, t.max_len)
    model = to_torch(compiled, t.readout_scale, t.softmax_coldness)
    metrics = make_evaluator(eval_sets(cfg, build_tasks(cfg)))(model)
    sink.log_metrics({"num_params": float(model.num_params()), **metrics}, 0)
    path = save_checkpoint(Path(out_dir) / "model.pt", model, _meta(cfg, model.shape, "pretrain"))
    return StageOutput(path, metrics)


def run_pretrain(cfg: ExperimentConfig, out_dir: Path, sink: Sink, dist: Distributed = IN_PROCESS) -> StageOutput:
    """Pretrain from scratch on the task mixture under the sampling prior (Tracr: compile)."""
    set_threads(cfg)
    if cfg.tracr is not None:
        return compile_tracr(cfg, out_dir, sink)
    if cfg.stories is not None:
        from wrapperdist.stories.stages import story_pretrain

        return story_pretrain(cfg, out_dir, sink, dist)
    assert cfg.pretrain.optim is not None
    tasks = build_tasks(cfg)
    shape = model_shape(cfg, tasks)
    torch.manual_seed(cfg.seed)  # same init on every worker (DDP also broadcasts rank 0's weights)
    model = GPT(shape)
    if dist.is_main:
        sink.log_metrics({"num_params": float(model.num_params())}, 0)
    result = train(
        dist.wrap(model), pretrain_batches(cfg, tasks, dist), cfg.pretrain.optim, sink,
        evaluate=make_evaluator(eval_sets(cfg, tasks)),
        checkpoint_path=Path(out_dir) / "model.pt", checkpoint_meta=_meta(cfg, shape, "pretrain"),
        is_main=dist.is_main, desc=f"pretrain {cfg.name}", progress=cfg.progress,
    )
    return StageOutput(result.checkpoint, result.final_metrics)


def run_finetune(
    cfg: ExperimentConfig, init_checkpoint: Path, out_dir: Path, sink: Sink, dist: Distributed = IN_PROCESS
) -> StageOutput:
    """Fine-tune a pretrained checkpoint on the single fine-tuning task (with C_Tr spurious share)."""
    set_threads(cfg)
    if cfg.stories is not None:
        from wrapperdist.stories.stages import story_finetune

        model, meta = load_model(init_checkpoint)
        return story_finetune(cfg, model, meta, out_dir, sink, dist)  # type: ignore[arg-type]
    tasks = build_tasks(cfg)
    model, meta = load_model(init_checkpoint)
    if model.shape.vocab_size != tasks.vocab.size or model.shape.seq_len != tasks.seq_len:
        raise ValueError(
            f"{init_checkpoint}: model has vocab {model.shape.vocab_size} / seq_len {model.shape.seq_len}, "
            f"but this config's data needs {tasks.vocab.size} / {tasks.seq_len} (max_len differs?)"
        )
    torch.manual_seed(cfg.seed)
    if cfg.tracr is not None and cfg.tracr.noise_std > 0:  # the paper's Tracr protocol: perturb, then fine-tune
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * cfg.tracr.noise_std)
    result = train(
        dist.wrap(model), finetune_batches(cfg, tasks, dist), cfg.finetune.optim, sink,
        evaluate=make_evaluator(eval_sets(cfg, tasks)),
        checkpoint_path=Path(out_dir) / "model.pt",
        checkpoint_meta={**_meta(cfg, model.shape, "finetune"), "parent_stage": meta.get("stage")},
        is_main=dist.is_main, desc=f"finetune {cfg.name}", progress=cfg.progress,
    )
    return StageOutput(result.checkpoint, result.final_metrics)


def capability_batches(cfg: ExperimentConfig, tasks: Tasks, batch_size: int, dist: Distributed = IN_PROCESS,
                       stream_id: int = 0):
    """The pretraining capability alone (count O_PT, no spurious correlation): reFT's data."""
    make = partial(tasks.task_batch, dist.shard(batch_size), task=pt_task(cfg))
    return stream(lambda rng: make(rng), seed=(cfg.seed, REFT_STREAM, stream_id, dist.rank))


def reft_optim(cfg: ExperimentConfig, lr: float, steps: int | None = None) -> OptimConfig:
    """The paper's reFT protocol: fine-tuning's hyperparameters, at another (smaller) LR."""
    r = cfg.analysis.reft
    return cfg.finetune.optim.model_copy(update={"lr": lr, "steps": steps or r.steps, "eval_every": r.eval_every,
                                                 "checkpoint_every": 0})


def run_reft(cfg: ExperimentConfig, model: Model, lr: float, sink: Sink, desc: str = "reft",
             steps: int | None = None, dist: Distributed = IN_PROCESS,
             sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
             tokenizer=None, evaluate=None) -> list[tuple[int, float]]:
    """Reverse fine-tune `model` (in place) on the pretraining capability for `steps` (default
    analysis.reft.steps); returns the pt_acc curve. `sets`: the experiment's eval sets, when the
    caller already built them (the analysis runs four reFTs on the same ones). Stories: reFT on
    stories with the feature, returning the twist_rate curve (`tokenizer` and `evaluate` then)."""
    set_threads(cfg)
    if cfg.stories is not None:
        from wrapperdist.stories.lm import build_tokenizer
        from wrapperdist.stories.stages import story_reft

        tokenizer = tokenizer or build_tokenizer(cfg.stories)  # deterministic: the one in the checkpoints
        return story_reft(cfg, model, tokenizer, reft_optim(cfg, lr, steps), sink, desc, dist, evaluate)  # type: ignore[arg-type]
    tasks = build_tasks(cfg)
    sets = sets or eval_sets(cfg, tasks)
    memory = MemorySink()
    optim = reft_optim(cfg, lr, steps)
    torch.manual_seed(cfg.seed)
    train(dist.wrap(model), capability_batches(cfg, tasks, optim.batch_size, dist), optim, TeeSink(sink, memory),
          evaluate=make_evaluator({k: sets[k] for k in ("pt_acc", "ft_acc")}), is_main=dist.is_main, desc=desc,
          progress=cfg.progress)
    return memory.history("pt_acc")
