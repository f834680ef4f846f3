"""Stage identity: the content hash of everything that determines a stage's output. Two stages with
the same key are the same stage, so its output is computed once and reused (and a rerun resumes)."""

from __future__ import annotations

from typing import Any, Literal

from wrapperdist.config import ExperimentConfig, config_hash

Kind = Literal["pretrain", "finetune", "analysis", "reft"]


def pretrain_identity(cfg: ExperimentConfig) -> dict[str, Any]:
    if cfg.tracr is not None:  # compiled, deterministic: no seed, and the weight noise belongs to fine-tuning
        return {"tracr": cfg.tracr.model_dump(mode="json", exclude={"noise_std"}), "eval": cfg.eval.model_dump()}
    if cfg.stories is not None:  # the deletion protocol only shapes fine-tuning
        return {"seed": cfg.seed, "stories": cfg.stories.model_dump(mode="json", exclude={"deletion"}),
                **cfg.model_dump(mode="json", include={"model", "pretrain", "eval"})}
    return {"seed": cfg.seed, **cfg.model_dump(mode="json", include={"grammar", "model", "pretrain", "eval"})}


def node_key(kind: Kind, cfg: ExperimentConfig, budget: int | None = None) -> str:
    """`pretrain-…` from the pretraining fields; later stages add their own sections."""
    ident: dict[str, Any] = {"pretrain": pretrain_identity(cfg)}
    if kind != "pretrain":
        ident["finetune"] = cfg.finetune.model_dump(mode="json", exclude={"from_checkpoint"})
        if cfg.stories is not None:
            ident["finetune"] |= {"deletion": cfg.stories.deletion}
        if cfg.tracr is not None:  # the seed and noise enter at fine-tuning in the Tracr setting
            ident["finetune"] |= {"seed": cfg.seed, "noise_std": cfg.tracr.noise_std}
    if kind == "analysis":
        ident["analysis"] = cfg.analysis.model_dump(mode="json")
    if kind == "reft":
        ident["reft"] = {**cfg.analysis.reft.model_dump(mode="json"), "budget": budget}
    return f"{kind}-{config_hash(ident)}"
