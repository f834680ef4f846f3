"""One experiment as a one-point sweep: `wrapperdist pretrain / finetune / run / analyze` plan the
same stage nodes as `wrapperdist sweep` and run them through the same executor, store and MLflow
recorder (in-process by default). So the run tree has the sweep's shape (sweep → pretrain →
fine-tune → analysis), and a stage finished by `run` is reused by a sweep over the same store
(`output_dir`, which is also the sweeps' default `storage_path: runs`), and the other way round.

A fine-tune may start from a checkpoint made elsewhere (`--from`): the checkpoint is imported into
the store under the hash of its bytes (`import-…`), and the fine-tune's key names that import."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wrapperdist.config import ExperimentConfig, TrackingConfig, config_hash, load_config
from wrapperdist.identity import node_key
from wrapperdist.settings.registry import setting_for
from wrapperdist.store import Store, remove, scratch_dir
from wrapperdist.sweep.plan import Node, Plan, downstream_nodes, finetune_node, make_plan, pretrain_node
from wrapperdist.sweep.recorder import KEY_TAG, SWEEP_TAG
from wrapperdist.sweep.spec import Device, ResourcesConfig, Sweep, SweepConfig
from wrapperdist.tracking import PARENT_TAG, STAGE_TAG, STORE_TAG, Tracker

INIT_TAG = "wrapperdist.init_checkpoint"  # where a fine-tune from --from started (path or run id)
INIT_KEY_TAG = "wrapperdist.init_key"  # the store entry of that start


def experiment_sweep(config_path: str | Path, overrides: Sequence[str] = (), analyze: bool = False,
                     device: Device = "cpu") -> Sweep:
    """The one-point sweep of an experiment file (its `--set` overrides applied and validated)."""
    return experiment_sweep_of(load_config(config_path, overrides=overrides), analyze, device, str(config_path))


def experiment_sweep_of(cfg: ExperimentConfig, analyze: bool, device: Device = "cpu", source: str = "",
                        storage: str | None = None) -> Sweep:
    """Named after the experiment, stored in `storage` (default: its output_dir); a failed stage is
    not retried (one point: the error is the answer)."""
    spec = SweepConfig(name=cfg.name, experiment=Path(source or "."), analyze=analyze,
                       storage_path=storage or str(cfg.output_dir),
                       resources=ResourcesConfig(device=device, max_failures=0))
    return Sweep(spec=spec, base=cfg.model_dump(mode="json"), points=[cfg], source=source or f"experiment {cfg.name}")


def stage_plan(sweep: Sweep, stages: tuple[str, ...], init: Node | None = None) -> Plan:
    """The nodes of `stages` for the sweep's one point; `init`: the fine-tune's imported start."""
    cfg = sweep.points[0]
    if stages == ("pretrain",):
        return Plan([pretrain_node(cfg)], [], [])
    if stages == ("finetune",):
        return Plan([], [import_finetune_node(cfg, init) if init else finetune_node(cfg)], [])
    return make_plan(sweep)  # pretrain (+ its control), fine-tune (+ analysis where sweep.spec.analyze)


def import_finetune_node(cfg: ExperimentConfig, init: Node) -> Node:
    """A fine-tune of `cfg` from an imported checkpoint: keyed by the import, not by cfg's pretraining."""
    setting = setting_for(cfg)
    key = "finetune-" + config_hash({"setting": setting.name, "from": init.key,
                                     "finetune": setting.finetune_identity(cfg)})
    return Node("finetune", key, init.key, f"ft {setting.run_label(cfg, 'finetune')}", cfg)


def import_checkpoint(store: Store, checkpoint: Path, cfg: ExperimentConfig) -> Node:
    """Put an outside checkpoint into the store (once: its key is the hash of its bytes)."""
    return Node("pretrain", _put(store, None, checkpoint), None, f"imported {checkpoint.name}", cfg)


def _put(store: Store, key: str | None, checkpoint: Path) -> str:
    """`checkpoint` in the store under `key` (a stage's own key) or, without one, as an import."""
    key = key or f"import-{hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:24]}"
    if not store.done(key):
        work = scratch_dir("import")
        try:
            shutil.copyfile(checkpoint, work / "model.pt")
            store.put(key, work)
        finally:
            remove(work)
    return key


def resolve_checkpoint(tracker: Tracker, ref: str | Path | None, work: Path, stage: str | None = None) -> Path:
    """A checkpoint file, a folder with model.pt, or an MLflow run id: a stage run that logged
    checkpoint/model.pt, or a sweep run with a `stage` child (default: pretrain; not the control's)."""
    if ref is None:
        raise ValueError("fine-tuning needs a pretrained model: pass --from RUN_ID_OR_PATH, set "
                         "finetune.from_checkpoint, or run `wrapperdist pretrain` on this config first")
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
    if own != wanted:  # a sweep run: its main-role child of that stage
        children = [r for r in tracker.children(str(ref)) if r.data.tags.get(STAGE_TAG) == wanted
                    and r.data.tags.get("wrapperdist.role") != "control"]
        if not children:
            raise ValueError(f"{ref!r}: no {wanted} run in it")
        run = children[0]
    try:
        return tracker.stage_checkpoint(run.info.run_id, wanted, work)
    except Exception as exc:  # MLflow raises several types for a run without that artifact
        raise ValueError(f"{ref!r}: no {wanted} checkpoint in this run ({exc})") from None


def finetune_start(sweep: Sweep, init_from: str | None, work: Path) -> Node | None:
    """Where a `finetune` starts: None for this config's own pretraining when the store has it;
    otherwise the imported checkpoint of --from (or finetune.from_checkpoint)."""
    cfg, store = sweep.points[0], Store(sweep.spec.storage_path)
    ref = init_from or cfg.finetune.from_checkpoint
    if ref is None and store.done(node_key("pretrain", setting_for(cfg), cfg)):
        return None
    tracker = Tracker(cfg.tracking.experiment, cfg.tracking.tracking_uri)
    return import_checkpoint(store, resolve_checkpoint(tracker, ref, work), cfg)


def analysis_of_run(ref: str, override: ExperimentConfig | None) -> tuple[Sweep, Plan, dict[str, str]]:
    """`wrapperdist analyze RUN`: RUN is a fine-tune run (or a sweep run with one). Its fine-tuned
    and pretrained checkpoints are put into the store (where they are not there already) under the
    keys the runs carry, and the plan is its analysis node (and the control's pretraining)."""
    tracking = override.tracking if override is not None else TrackingConfig()
    tracker = Tracker(tracking.experiment, tracking.tracking_uri)
    run = tracker.client.get_run(ref)
    tracker.experiment_id = run.info.experiment_id  # the analysis joins the run's own experiment
    ft_run = run if run.data.tags.get(STAGE_TAG) == "finetune" else next(
        (r for r in tracker.children(ref) if r.data.tags.get(STAGE_TAG) == "finetune"), None)
    if ft_run is None:
        raise ValueError(f"run {ref} is neither a fine-tune run nor a sweep run with one")
    with tempfile.TemporaryDirectory() as tmp:
        finetuned = tracker.stage_checkpoint(ft_run.info.run_id, "finetune", Path(tmp) / "finetune")
        cfg = override or _checkpoint_config(finetuned)
        # in the store of the sweep that made the fine-tune (its analyses and controls are there)
        sweep = experiment_sweep_of(cfg, analyze=True, storage=_sweep_storage(tracker, ft_run))
        store = Store(sweep.spec.storage_path)
        ft_key = _put(store, ft_run.data.tags.get(KEY_TAG), finetuned)
        pt_key = _pretrained_key(tracker, ft_run, store, Path(tmp) / "pretrain")
    setting = setting_for(cfg)
    control = pretrain_node(setting.control_config(cfg), role="control")
    analysis = next(n for n in downstream_nodes(cfg, [], True) if n.kind == "analysis")
    key = analysis.key  # the sweep's own analysis of this fine-tune (reused if done) ...
    if ft_key != analysis.parent:  # ... unless the fine-tune is not the config's own (an import)
        key = "analysis-" + config_hash({"of": ft_key, "analysis": cfg.analysis.model_dump(mode="json")})
    analysis = Node("analysis", key, ft_key, analysis.name, cfg, requires=(pt_key, control.key))
    return sweep, Plan([control], [], [analysis]), {ft_key: ft_run.info.run_id}


def _sweep_storage(tracker: Tracker, run: Any) -> str | None:
    """The store of the sweep a stage run belongs to (a tag of its sweep run)."""
    sweep_id = run.data.tags.get(SWEEP_TAG)
    if not sweep_id:
        return None
    try:
        return tracker.client.get_run(sweep_id).data.tags.get(STORE_TAG)
    except Exception:  # noqa: BLE001 - a deleted sweep run: fall back to the config's output_dir
        return None


def _checkpoint_config(checkpoint: Path) -> ExperimentConfig:
    from wrapperdist.train import load_checkpoint

    _, meta = load_checkpoint(checkpoint)
    return ExperimentConfig.model_validate(meta["config"])


def _pretrained_key(tracker: Tracker, ft_run: Any, store: Store, work: Path) -> str:
    """The store key of the model a fine-tune run started from: its sweep parent (a pretrain run)
    or the import it names; fetched into the store from MLflow where the store lacks it."""
    init_key = ft_run.data.tags.get(INIT_KEY_TAG)
    if init_key and store.done(init_key):
        return init_key
    parent_id = ft_run.data.tags.get(PARENT_TAG)
    parent = tracker.client.get_run(parent_id) if parent_id else None
    if parent is not None and parent.data.tags.get(STAGE_TAG) == "pretrain":
        key = parent.data.tags.get(KEY_TAG)
        if key and store.done(key):
            return key
        return _put(store, key, tracker.stage_checkpoint(parent_id, "pretrain", work))
    source = ft_run.data.tags.get(INIT_TAG)
    if source and Path(source).is_file():
        return _put(store, init_key, Path(source))
    raise ValueError(f"no pretrained checkpoint found for fine-tune run {ft_run.info.run_id}")


def stage_summary(summary: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """What `run` prints: the sweep run, then per stage of the main experiment its run, store entry,
    checkpoint and final metrics (the analysis: its verdict)."""
    store = Store(summary["store"])
    out = {k: summary[k] for k in ("sweep_run_id", "tracking_uri", "experiment_id", "store", "wall_s", "failed")}
    for node in [*plan.pretrain, *plan.finetune, *plan.downstream]:
        if node.role != "main" or node.kind == "reft":
            continue
        entry: dict[str, Any] = {"run_id": summary["runs"].get(node.key), "key": node.key}
        if store.done(node.key):
            entry.update(store.read_json(node.key, "metrics.json"))
            if node.kind == "analysis":
                entry["verdict"] = store.read_json(node.key, "verdict.json")["label"]
            else:
                entry["checkpoint"] = f"{store.root}/{node.key}/model.pt"
        out[node.kind] = entry
    return out


def tag_import(summary: dict[str, Any], plan: Plan, init: Node, source: str) -> None:
    """Say on a fine-tune from --from where it started (`analyze` finds its pretrained model so)."""
    run_id = summary["runs"].get(plan.finetune[0].key)
    if run_id:
        tracker = Tracker(plan.finetune[0].config.tracking.experiment, summary["tracking_uri"])
        tracker.client.set_tag(run_id, INIT_TAG, source)
        tracker.client.set_tag(run_id, INIT_KEY_TAG, init.key)
