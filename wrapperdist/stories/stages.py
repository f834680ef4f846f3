"""The stories setting's stages: pretrain a small LM, delete the feature by fine-tuning, revive it by
reFT. Same loop, sinks and checkpoints as the PCFG stages; the tokenizer travels inside every
checkpoint's metadata, so a fine-tune, an analysis or `wrapperdist generate` reads it from there."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from wrapperdist.config import ExperimentConfig, OptimConfig
from wrapperdist.models import GPT, GPTShape
from wrapperdist.sink import MemorySink, Sink, TeeSink
from wrapperdist.stories.lm import (
    batch_stream,
    build_corpus,
    build_tokenizer,
    encode,
    lm_loss,
    make_story_evaluator,
    protocol_records,
)
from wrapperdist.stories.records import to_text
from wrapperdist.train import train
from wrapperdist.train.distributed import IN_PROCESS, Distributed

STREAMS = {"pretrain": 11, "finetune": 12, "reft": 13}


def story_shape(cfg: ExperimentConfig, tokenizer: Tokenizer) -> GPTShape:
    assert cfg.stories is not None
    m = cfg.model
    return GPTShape(vocab_size=tokenizer.get_vocab_size(), seq_len=cfg.stories.seq_len, n_layer=m.n_layer,
                    n_head=m.n_head, d_model=m.d_model, d_mlp=m.d_mlp or 4 * m.d_model, dropout=m.dropout)


def tokenizer_of(meta: dict) -> Tokenizer:
    if "tokenizer" not in meta:
        raise ValueError("this checkpoint has no tokenizer: not a stories-setting model")
    return Tokenizer.from_str(meta["tokenizer"])


def _meta(cfg: ExperimentConfig, shape: GPTShape, stage: str, tokenizer: Tokenizer) -> dict:
    return {"stage": stage, "arch": "gpt", "shape": shape.to_dict(), "config": cfg.model_dump(mode="json"),
            "tokenizer": tokenizer.to_str()}


def stage_batches(cfg: ExperimentConfig, stage: str, tokenizer: Tokenizer, batch_size: int,
                  dist: Distributed = IN_PROCESS, stream_id: int = 0):
    assert cfg.stories is not None
    records = protocol_records(cfg.stories, stage, build_corpus(cfg.stories), seed=cfg.seed)
    tokens, targets = encode(tokenizer, [to_text(r) for r in records], cfg.stories.seq_len)
    return batch_stream(tokens, targets, dist.shard(batch_size), (cfg.seed, STREAMS[stage], stream_id, dist.rank))


def evaluator(cfg: ExperimentConfig, tokenizer: Tokenizer):
    assert cfg.stories is not None
    return make_story_evaluator(cfg.stories, tokenizer, build_corpus(cfg.stories), seed=cfg.eval.seed)


def story_pretrain(cfg: ExperimentConfig, out_dir: Path, sink: Sink, dist: Distributed = IN_PROCESS):
    from wrapperdist.stages import StageOutput

    assert cfg.stories is not None and cfg.pretrain.optim is not None
    tokenizer = build_tokenizer(cfg.stories)
    shape = story_shape(cfg, tokenizer)
    torch.manual_seed(cfg.seed)
    model = GPT(shape)
    if dist.is_main:
        sink.log_metrics({"num_params": float(model.num_params())}, 0)
    optim = cfg.pretrain.optim
    result = train(dist.wrap(model), stage_batches(cfg, "pretrain", tokenizer, optim.batch_size, dist), optim, sink,
                   evaluate=evaluator(cfg, tokenizer), checkpoint_path=Path(out_dir) / "model.pt",
                   checkpoint_meta=_meta(cfg, shape, "pretrain", tokenizer), is_main=dist.is_main,
                   desc=f"pretrain {cfg.name}", progress=cfg.progress, loss_fn=lm_loss)
    return StageOutput(result.checkpoint, result.final_metrics)


def story_finetune(cfg: ExperimentConfig, model: GPT, meta: dict, out_dir: Path, sink: Sink,
                   dist: Distributed = IN_PROCESS):
    from wrapperdist.stages import StageOutput

    tokenizer = tokenizer_of(meta)
    torch.manual_seed(cfg.seed)
    optim = cfg.finetune.optim
    ckpt_meta = {**_meta(cfg, model.shape, "finetune", tokenizer), "parent_stage": meta.get("stage")}
    result = train(dist.wrap(model), stage_batches(cfg, "finetune", tokenizer, optim.batch_size, dist), optim, sink,
                   evaluate=evaluator(cfg, tokenizer), checkpoint_path=Path(out_dir) / "model.pt",
                   checkpoint_meta=ckpt_meta, is_main=dist.is_main, desc=f"finetune {cfg.name}",
                   progress=cfg.progress, loss_fn=lm_loss)
    return StageOutput(result.checkpoint, result.final_metrics)


def story_reft(cfg: ExperimentConfig, model: GPT, tokenizer: Tokenizer, optim: OptimConfig, sink: Sink, desc: str,
               dist: Distributed = IN_PROCESS, evaluate=None) -> list[tuple[int, float]]:
    """reFT on stories that have the feature; returns the twist_rate curve."""
    memory = MemorySink()
    torch.manual_seed(cfg.seed)
    train(dist.wrap(model), stage_batches(cfg, "reft", tokenizer, optim.batch_size, dist), optim,
          TeeSink(sink, memory), evaluate=evaluate or evaluator(cfg, tokenizer), is_main=dist.is_main, desc=desc,
          progress=cfg.progress, loss_fn=lm_loss)
    return memory.history("twist_rate")
