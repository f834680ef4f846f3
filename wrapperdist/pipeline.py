"""The local pipeline: pretrain and/or fine-tune one experiment in this process, recorded in MLflow
as one parent run (the invocation) with a child run per stage."""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import yaml

from wrapperdist.config import ExperimentConfig, TrackingConfig, config_hash, flatten
from wrapperdist.identity import node_key
from wrapperdist.models import load_model
from wrapperdist.plots import training_curves
from wrapperdist.setting import DEFAULT_RUNTIME, AnalysisModels, Runtime, Setting, StageOutput
from wrapperdist.settings.registry import setting_for
from wrapperdist.sink import MemorySink, TeeSink
from wrapperdist.stages import run_finetune, run_pretrain
from wrapperdist.store import Store, remove, scratch_dir, write_stage_outputs
from wrapperdist.tracking import PARENT_TAG, STAGE_TAG, Tracker
from wrapperdist.train import load_checkpoint

INIT_TAG = "wrapperdist.init_checkpoint"  # where a fine-tune started: analyses need the pretrained model


def _tracked_stage(tracker: Tracker, setting: Setting, cfg: ExperimentConfig, stage: str, parent_id: str, run,
                   extra_tags: dict[str, str] | None = None):
    """Run `run(sink)` as a child run of `parent_id`, then attach its checkpoint and curves."""
    memory = MemorySink()
    tags = {STAGE_TAG: stage, "wrapperdist.pretrain_key": node_key("pretrain", setting, cfg), **(extra_tags or {})}
    with tracker.run(f"{stage} {cfg.name}", parent_id, flatten(cfg.model_dump(mode="json")), tags) as sink:
        out: StageOutput = run(TeeSink(sink, memory))
        sink.log_artifact(out.checkpoint, "checkpoint")
        figure = training_curves(memory, f"{stage}: {cfg.name}", setting.eval_metrics)
        sink.log_figure(figure, f"plots/{stage}_curves.png")
        plt.close(figure)
        return out, sink.run_id


def run_experiment(cfg: ExperimentConfig, stages: tuple[str, ...] = ("pretrain", "finetune"),
                   init_from: str | None = None, runtime: Runtime = DEFAULT_RUNTIME,
                   extra_tags: dict[str, str] | None = None) -> dict:
    """Run the requested stages (pretrain, finetune, analyze). `init_from` (fine-tune only) is a
    checkpoint path or an MLflow run id (a pretrain run, or an invocation run with a pretrain child).
    `extra_tags` go on the invocation run (e.g. the command line's --set overrides). Returns a summary dict."""
    setting = setting_for(cfg)
    tracker = Tracker(cfg.tracking.experiment, cfg.tracking.tracking_uri)
    summary: dict = {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id}
    params = flatten(cfg.model_dump(mode="json"))
    tags = {STAGE_TAG: "invocation", "wrapperdist.config_hash": config_hash(cfg), **(extra_tags or {})}
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
            out, run_id = _tracked_stage(tracker, setting, cfg, "pretrain", parent.run_id,
                                         lambda sink: run_pretrain(setting, cfg, root / "pretrain", sink, runtime))
            checkpoint = out.checkpoint
            summary["pretrain"] = {"run_id": run_id, "checkpoint": str(checkpoint), **out.metrics}
            parent.log_metrics({f"pretrain.{k}": v for k, v in out.metrics.items()}, 0)
        if "finetune" in stages:
            init = checkpoint or resolve_checkpoint(tracker, init_from or cfg.finetune.from_checkpoint, root / "init")
            out, run_id = _tracked_stage(
                tracker, setting, cfg, "finetune", parent.run_id,
                lambda sink: run_finetune(setting, cfg, init, root / "finetune", sink, runtime),
                extra_tags={INIT_TAG: str(init.resolve())},
            )
            summary["finetune"] = {"run_id": run_id, "checkpoint": str(out.checkpoint), **out.metrics}
            parent.log_metrics({f"finetune.{k}": v for k, v in out.metrics.items()}, 0)
            if "analyze" in stages:
                result = run_analysis(tracker, cfg, run_id, init, out.checkpoint, root / "analysis", runtime)
                summary["analysis"] = result
                parent.log_metrics({"analysis.wrapper": float(result["verdict"] == "wrapper")}, 0)
    return summary


def control_checkpoint(tracker: Tracker, cfg: ExperimentConfig, parent_id: str, runtime: Runtime) -> Path:
    """The setting's control model, pretrained once per distinct config and reused after."""
    setting = setting_for(cfg)
    control = setting.control_config(cfg)
    store, key = Store(str(cfg.output_dir)), node_key("pretrain", setting, control)
    if not store.done(key):
        work = scratch_dir("control")
        try:
            out, _ = _tracked_stage(tracker, setting, control, "pretrain", parent_id,
                                    lambda sink: run_pretrain(setting, control, work, sink, runtime),
                                    {"wrapperdist.role": "control"})
            write_stage_outputs(work, out.metrics, [])
            store.put(key, work)
        finally:
            remove(work)
    return store.fetch(key, cfg.output_dir / "fetched" / key) / "model.pt"


def run_analysis(tracker: Tracker, cfg: ExperimentConfig, finetune_run_id: str, pretrained: Path,
                 finetuned: Path, out_dir: Path, runtime: Runtime = DEFAULT_RUNTIME) -> dict:
    """The analysis stage, as a child run of the fine-tune run: evidence, verdict, report, figures."""
    setting = setting_for(cfg)
    tags = {STAGE_TAG: "analysis", "wrapperdist.pretrain_key": node_key("pretrain", setting, cfg)}
    params = flatten({"analysis": cfg.analysis.model_dump(mode="json")})
    with tracker.run(f"analysis {cfg.name}", finetune_run_id, params, tags) as sink:
        control = control_checkpoint(tracker, cfg, sink.run_id, runtime)
        models = AnalysisModels(*(load_model(p)[0] for p in (pretrained, finetuned, control)))
        output = setting.analyze(cfg, models, sink, runtime)
        out_dir.mkdir(parents=True, exist_ok=True)
        report = out_dir / "report.md"
        report.write_text(output.report)
        sink.log_artifact(report)
        for name, fig in output.figures.items():
            fig.savefig(out_dir / f"{name}.png", dpi=110)
            sink.log_figure(fig, f"{name}.png")
            plt.close(fig)
        sink.set_tags({"wrapperdist.verdict": output.label})
        return {"run_id": sink.run_id, "verdict": output.label, "report": str(report), **output.summary_metrics()}


def analyze_run(ref: str, override: ExperimentConfig | None = None, runtime: Runtime = DEFAULT_RUNTIME) -> dict:
    """`wrapperdist analyze RUN`: RUN is a fine-tune run id or an invocation with a fine-tune child.
    The experiment config comes from the fine-tuned checkpoint unless `override` is given."""
    tracking = override.tracking if override is not None else TrackingConfig()
    tracker = Tracker(tracking.experiment, tracking.tracking_uri)
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
    return run_analysis(tracker, cfg, ft_run.info.run_id, pretrained, finetuned, out_dir, runtime)


def resolve_checkpoint(tracker: Tracker, ref: str | Path | None, work: Path, stage: str | None = None) -> Path:
    """A checkpoint file, a folder with model.pt, or an MLflow run id: a stage run that logged
    checkpoint/model.pt, or an invocation with a `stage` child (default: pretrain)."""
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
        run = tracker.client.get_run(str(ref))
    except Exception as exc:  # MLflow raises several types for an unknown run id
        raise ValueError(f"{ref!r}: neither a checkpoint file, a folder with model.pt, nor an MLflow run "
                         f"({exc})") from None
    own = run.data.tags.get(STAGE_TAG)
    wanted = own if own in ("pretrain", "finetune", "reft") else (stage or "pretrain")
    try:
        return tracker.stage_checkpoint(str(ref), wanted, work)
    except Exception as exc:  # MLflow raises several types for a run without that artifact
        raise ValueError(f"{ref!r}: no {wanted} checkpoint in this run ({exc})") from None
