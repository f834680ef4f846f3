"""Stage identity: the content hash of everything that determines a stage's output. Two stages with
the same key are the same stage, so its output is computed once and reused (and a rerun resumes).
What determines a pretrained or fine-tuned model is the setting's to say (`Setting.*_identity`);
the defaults below fit a setting that trains its model from scratch."""

from __future__ import annotations

from typing import Any

from wrapperdist.config import ExperimentConfig, config_hash
from wrapperdist.setting import Setting, StageKind


def default_pretrain_identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """Seed, the setting's pretraining fields, the model, the pretraining optimiser and the eval sets."""
    return {"seed": cfg.seed, "setting": cfg.setting.pretrain_part(),
            **cfg.model_dump(mode="json", include={"model", "pretrain", "eval"})}


def default_finetune_identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """The setting's fine-tuning fields and the fine-tuning optimiser."""
    return {"setting": cfg.setting.finetune_part(), **cfg.finetune.model_dump(mode="json", exclude={"from_checkpoint"})}


def node_key(kind: StageKind, setting: Setting, cfg: ExperimentConfig, budget: int | None = None) -> str:
    """`pretrain-…` from the pretraining fields; later stages add their own sections."""
    ident: dict[str, Any] = {"setting": setting.name, "pretrain": setting.pretrain_identity(cfg)}
    if kind != "pretrain":
        ident["finetune"] = setting.finetune_identity(cfg)
    if kind == "analysis":
        ident["analysis"] = cfg.analysis.model_dump(mode="json")
    if kind == "reft":
        ident["reft"] = {**cfg.analysis.reft.model_dump(mode="json"), "budget": budget}
    return f"{kind}-{config_hash(ident)}"
