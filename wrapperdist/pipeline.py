"""The local pipeline: pretrain and/or fine-tune one experiment in this process, recorded in MLflow
as one parent run (the invocation) with a child run per stage."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml

from wrapperdist.config import ExperimentConfig, config_hash, flatten
from wrapperdist.plots import training_curves
from wrapperdist.sink import MemorySink, TeeSink
from wrapperdist.stages import StageOutput, run_finetune, run_pretrain
from wrapperdist.tracking import STAGE_TAG, Tracker


def pretrain_hash(cfg: ExperimentConfig) -> str:
    """Identity of a pretrained model: everything that shapes it, nothing that only fine-tuning reads."""
    return config_hash({"seed": cfg.seed}, cfg.grammar, cfg.model, cfg.pretrain, cfg.eval)


def _tracked_stage(tracker: Tracker, cfg: ExperimentConfig, stage: str, parent_id: str, out_dir: Path, run):
    memory = MemorySink()
    tags = {STAGE_TAG: stage, "wrapperdist.pretrain_hash": pretrain_hash(cfg)}
    with tracker.run(f"{stage} {cfg.name}", parent_id, flatten(cfg.model_dump(mode="json")), tags) as sink:
        out: StageOutput = run(TeeSink(sink, memory))
        sink.log_artifact(out.checkpoint, "checkpoint")
        sink.log_figure(training_curves(memory, f"{stage}: {cfg.name}"), f"plots/{stage}_curves.png")
        return out, sink.run_id


def run_experiment(
    cfg: ExperimentConfig, stages: tuple[str, ...] = ("pretrain", "finetune"), init_from: str | None = None
) -> dict:
    """Run the requested stages. `init_from` (fine-tune only) is a checkpoint path or an MLflow run id
    (a pretrain run, or an invocation run with a pretrain child). Returns a summary dict."""
    tracker = Tracker(cfg.tracking.experiment, cfg.tracking.tracking_uri)
    summary: dict = {"tracking_uri": tracker.uri}
    params = flatten(cfg.model_dump(mode="json"))
    tags = {STAGE_TAG: "invocation", "wrapperdist.config_hash": config_hash(cfg)}
    with tracker.run(f"{'+'.join(stages)} {cfg.name}", None, params, tags) as parent:
        summary["parent_run_id"] = parent.run_id
        # The run id in the folder name keeps two invocations in the same second apart.
        root = cfg.output_dir / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{parent.run_id[:8]}"
        summary["output_dir"] = str(root)
        with tempfile.TemporaryDirectory() as tmp:
            resolved = Path(tmp) / "config.yaml"
            resolved.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            parent.log_artifact(resolved)
        checkpoint: Path | None = None
        if "pretrain" in stages:
            out, run_id = _tracked_stage(
                tracker, cfg, "pretrain", parent.run_id, root / "pretrain",
                lambda sink: run_pretrain(cfg, root / "pretrain", sink),
            )
            checkpoint = out.checkpoint
            summary["pretrain"] = {"run_id": run_id, "checkpoint": str(checkpoint), **out.metrics}
            parent.log_metrics({f"pretrain.{k}": v for k, v in out.metrics.items()}, 0)
        if "finetune" in stages:
            if checkpoint is None:
                checkpoint = _resolve_init(tracker, init_from or cfg.finetune.from_checkpoint, root)
            init = checkpoint
            out, run_id = _tracked_stage(
                tracker, cfg, "finetune", parent.run_id, root / "finetune",
                lambda sink: run_finetune(cfg, init, root / "finetune", sink),
            )
            summary["finetune"] = {"run_id": run_id, "checkpoint": str(out.checkpoint), **out.metrics}
            parent.log_metrics({f"finetune.{k}": v for k, v in out.metrics.items()}, 0)
    return summary


def _resolve_init(tracker: Tracker, ref: str | Path | None, root: Path) -> Path:
    if ref is None:
        raise ValueError(
            "fine-tuning needs a pretrained model: pass --from RUN_ID_OR_PATH or set finetune.from_checkpoint"
        )
    path = Path(ref)
    if path.is_file():
        return path
    if path.is_dir() and (path / "model.pt").is_file():
        return path / "model.pt"
    try:
        return tracker.stage_checkpoint(str(ref), "pretrain", root / "init")
    except Exception as exc:  # MLflow raises several types for an unknown run id
        raise ValueError(f"--from {ref!r}: neither a checkpoint file nor a usable MLflow run ({exc})") from None
