"""The local pipeline: pretrain and/or fine-tune one experiment in this process, recorded in MLflow
as one parent run (the invocation) with a child run per stage."""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import yaml

from wrapperdist.analyze import analyze, control_config
from wrapperdist.config import ExperimentConfig, config_hash, flatten
from wrapperdist.identity import node_key
from wrapperdist.plots import training_curves
from wrapperdist.sink import MemorySink, TeeSink
from wrapperdist.stages import StageOutput, load_model, run_finetune, run_pretrain
from wrapperdist.store import Store, remove, scratch_dir, write_stage_outputs
from wrapperdist.tracking import PARENT_TAG, STAGE_TAG, Tracker
from wrapperdist.train import load_checkpoint

INIT_TAG = "wrapperdist.init_checkpoint"  # where a fine-tune started: analyses need the pretrained model


def _tracked_stage(tracker: Tracker, cfg: ExperimentConfig, stage: str, parent_id: str, run,
                   extra_tags: dict[str, str] | None = None):
    """Run `run(sink)` as a child run of `parent_id`, then attach its checkpoint and curves."""
    memory = MemorySink()
    tags = {STAGE_TAG: stage, "wrapperdist.pretrain_key": node_key("pretrain", cfg), **(extra_tags or {})}
    with tracker.run(f"{stage} {cfg.name}", parent_id, flatten(cfg.model_dump(mode="json")), tags) as sink:
        out: StageOutput = run(TeeSink(sink, memory))
        sink.log_artifact(out.checkpoint, "checkpoint")
        figure = training_curves(memory, f"{stage}: {cfg.name}")
        sink.log_figure(figure, f"plots/{stage}_curves.png")
        plt.close(figure)
        return out, sink.run_id


def run_experiment(
    cfg: ExperimentConfig, stages: tuple[str, ...] = ("pretrain", "finetune"), init_from: str | None = None
) -> dict:
    """Run the requested stages (pretrain, finetune, analyze). `init_from` (fine-tune only) is a
    checkpoint path or an MLflow run id (a pretrain run, or an invocation run with a pretrain child).
    Returns a summary dict."""
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
                tracker, cfg, "pretrain", parent.run_id,
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
                tracker, cfg, "finetune", parent.run_id,
                lambda sink: run_finetune(cfg, init, root / "finetune", sink),
                extra_tags={INIT_TAG: str(init.resolve())},
            )
            summary["finetune"] = {"run_id": run_id, "checkpoint": str(out.checkpoint), **out.metrics}
            parent.log_metrics({f"finetune.{k}": v for k, v in out.metrics.items()}, 0)
            if "analyze" in stages:
                result = run_analysis(tracker, cfg, run_id, init, out.checkpoint, root / "analysis")
                summary["analysis"] = result
                parent.log_metrics({"analysis.wrapper": float(result["verdict"] == "wrapper")}, 0)
    return summary


def control_checkpoint(tracker: Tracker, cfg: ExperimentConfig, parent_id: str) -> Path:
    """The Scr.+FT control's pretrained model, trained once per distinct config and reused after."""
    control = control_config(cfg)
    store, key = Store(str(cfg.output_dir)), node_key("pretrain", control)
    if not store.done(key):
        work = scratch_dir("control")
        try:
            out, _ = _tracked_stage(tracker, control, "pretrain", parent_id,
                                    lambda sink: run_pretrain(control, work, sink), {"wrapperdist.role": "scr_control"})
            write_stage_outputs(work, out.metrics, [])
            store.put(key, work)
        finally:
            remove(work)
    return store.fetch(key, cfg.output_dir / "fetched" / key) / "model.pt"


def run_analysis(tracker: Tracker, cfg: ExperimentConfig, finetune_run_id: str, pretrained: Path,
                 finetuned: Path, out_dir: Path) -> dict:
    """The analysis stage, as a child run of the fine-tune run: evidence, verdict, report, figures."""
    tags = {STAGE_TAG: "analysis", "wrapperdist.pretrain_key": node_key("pretrain", cfg)}
    params = flatten({"analysis": cfg.analysis.model_dump(mode="json")})
    with tracker.run(f"analysis {cfg.name}", finetune_run_id, params, tags) as sink:
        control = control_checkpoint(tracker, cfg, sink.run_id)
        models = [load_model(p)[0] for p in (pretrained, finetuned, control)]
        output = analyze(cfg, *models, sink)
        out_dir.mkdir(parents=True, exist_ok=True)
        report = out_dir / "report.md"
        report.write_text(output.report)
        sink.log_artifact(report)
        for name, fig in output.figures.items():
            fig.savefig(out_dir / f"{name}.png", dpi=110)
            sink.log_figure(fig, f"{name}.png")
            plt.close(fig)
        sink.set_tags({"wrapperdist.verdict": output.verdict.label})
        return {"run_id": sink.run_id, "verdict": output.verdict.label, "report": str(report),
                **{k: v for k, v in asdict(output.evidence).items()}}


def analyze_run(ref: str, override: ExperimentConfig | None = None) -> dict:
    """`wrapperdist analyze RUN`: RUN is a fine-tune run id or an invocation with a fine-tune child.
    The experiment config comes from the fine-tuned checkpoint unless `override` is given."""
    probe_cfg = override or ExperimentConfig.model_validate(_default_experiment())
    tracker = Tracker(probe_cfg.tracking.experiment, probe_cfg.tracking.tracking_uri)
    run = tracker.client.get_run(ref)
    tracker.experiment_id = run.info.experiment_id  # the analysis joins the run's own experiment
    ft_run = run if run.data.tags.get(STAGE_TAG) == "finetune" else next(
        (r for r in tracker.children(ref) if r.data.tags.get(STAGE_TAG) == "finetune"), None)
    if ft_run is None:
        raise ValueError(f"run {ref} is neither a fine-tune run nor an invocation with one")
    scratch = Path(tempfile.mkdtemp(prefix="wrapperdist-analyze-"))
    finetuned = tracker.stage_checkpoint(ft_run.info.run_id, "finetune", scratch / "finetune")
    _, meta = load_checkpoint(finetuned)
    cfg = override or ExperimentConfig.model_validate(meta["config"])
    pretrained = Path(ft_run.data.tags.get(INIT_TAG, "/nonexistent"))
    parent_id = ft_run.data.tags.get(PARENT_TAG)
    if not pretrained.is_file() and parent_id:  # a sweep's fine-tune hangs under its pretrain run
        with contextlib.suppress(Exception):  # MLflow raises several types; reported just below
            pretrained = tracker.stage_checkpoint(parent_id, "pretrain", scratch / "pretrain")
    if not pretrained.is_file():
        raise ValueError(f"no pretrained checkpoint found for fine-tune run {ft_run.info.run_id}")
    out_dir = cfg.output_dir / f"analysis-{ft_run.info.run_id[:8]}"
    return run_analysis(tracker, cfg, ft_run.info.run_id, pretrained, finetuned, out_dir)


def _default_experiment() -> dict:
    """Only the tracking section matters before the run's own config is read."""
    optim = {"lr": 1.0, "steps": 1, "batch_size": 1}
    return {"pretrain": {"optim": optim}, "finetune": {"optim": optim}}


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
