"""`wrapperdist sweep`: load and plan a sweep, then run it in-process or on Ray, with the driver as
the MLflow writer. Interrupts end the open runs as KILLED; `--resume` finishes what is left."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from wrapperdist.config import ConfigError, config_hash, flatten
from wrapperdist.setting import default_threads
from wrapperdist.store import Store
from wrapperdist.sweep.cluster import (
    RayTarget,
    autoscaling_config,
    cluster_layout,
    concurrency_line,
    max_nodes,
    pin_autoscaling_coordinator,
    resolve_address,
)
from wrapperdist.sweep.executors import Executor, Layout, LocalExecutor, StudyRef, execute, layout_for
from wrapperdist.sweep.plan import Plan, make_plan
from wrapperdist.sweep.progress import SweepProgress
from wrapperdist.sweep.publish import log_spec, set_description
from wrapperdist.sweep.recorder import SweepRecorder
from wrapperdist.sweep.spec import Sweep, load_sweep
from wrapperdist.sweep.study import storage_url, study_name
from wrapperdist.tracking import OVERRIDES_TAG, STORE_TAG, Tracker, ui_hint


def plan_summary(sweep: Sweep, plan: Plan) -> str:
    """The --dry-run listing: every node and the resources the sweep would use."""
    layout = layout_for(sweep)
    lines = [f"sweep {sweep.spec.name!r} from {sweep.source}: {len(sweep.points)} grid point(s)",
             f"resources: {layout.summary()}",
             f"storage: {sweep.spec.storage_path}  (stage store: {sweep.spec.storage_path}/store)", ""]
    for title, nodes in (("pretrain", plan.pretrain), ("finetune", plan.finetune), ("analysis/reFT", plan.downstream)):
        lines.append(f"{title} ({len(nodes)}):")
        lines += [f"  {n.key}  {n.name}" + (f"  <- {n.parent}" if n.parent else "") for n in nodes]
    if sweep.spec.search:
        s = sweep.spec.search
        lines.append(f"finetune: Optuna search, {s.num_samples} trial(s) per grid point over "
                     f"{', '.join(s.space)} ({s.mode} {s.metric}{', ASHA' if s.asha else ''})")
    return "\n".join(lines)


def _spec_hash(sweep: Sweep) -> str:
    return config_hash(sweep.spec.model_dump(mode="json", exclude={"resources"}), sweep.base)


class _Terminated(Exception):
    pass


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Terminated()


def _ray_pid_file(storage: Path, name: str) -> Path:
    return storage / f".{name}.ray-processes.json"


def _reap_orphans(pid_file: Path) -> int:
    """After a driver was killed with -9, its Ray daemons live on: end those it recorded."""
    import psutil

    if not pid_file.is_file():
        return 0
    killed = 0
    for entry in json.loads(pid_file.read_text()):
        try:
            proc = psutil.Process(entry["pid"])
            if abs(proc.create_time() - entry["created"]) < 1e-3:
                proc.kill()
                killed += 1
        except psutil.Error:
            continue
    pid_file.unlink()
    return killed


def _start_ray(layout, pid_file: Path, address: str | None) -> None:
    """Attach to `address` (see `cluster.resolve_address`), or start an instance of our own."""
    import psutil
    import ray

    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # 'start' reports carry no metric
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # MLflow is the record; the executor adds back Tune's JSON logger only (no CSV, no TensorBoard)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        pin_autoscaling_coordinator()  # on the head, which outlives the worker nodes
        return
    # address="local": a new instance of our own, even when a `ray start --head` is still running or
    # a crashed head left /tmp/ray/ray_current_cluster behind (ray.init() with no address attaches
    # to those, and then refuses num_cpus).
    ray.init(address="local", num_cpus=layout.cpus, include_dashboard=False, dashboard_host="127.0.0.1",
             log_to_driver=False)
    children = psutil.Process().children(recursive=True)
    pid_file.write_text(json.dumps([{"pid": p.pid, "created": p.create_time()} for p in children]))


def _ray_executor(sweep: Sweep, store: Store, recorder: SweepRecorder, storage: str, pid_file: Path,
                  target: RayTarget, log) -> Executor:
    """Start (or attach to) Ray and size the trials to the cluster. Ray is imported only here: a
    `--local` sweep runs without the `ray` extra."""
    import ray

    from wrapperdist.sweep.ray_executor import RayExecutor

    _start_ray(Layout(sweep.spec.resources.cpus or default_threads(), 1, 1, 0), pid_file, target.address)
    have = ray.cluster_resources()  # a cluster may be bigger than this machine
    gpus = int(have.get("GPU", 0))
    config = autoscaling_config() if target.address else None
    if config is not None:  # GPU nodes the autoscaler may add count for `device: cuda` / `auto`
        gpus = max(gpus, int(sum(n.get("GPU", 0) for n in max_nodes(config))))
    layout = layout_for(sweep, cpus=int(have.get("CPU", 0)) or None, gpus=gpus)
    log(f"Ray cluster: {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs -> {layout.summary()}")
    if target.address:  # a cluster that may grow: see sweep/cluster.py
        layout = cluster_layout(layout, sweep.spec.resources.max_concurrent_trials, config)
        log(f"on the cluster: {concurrency_line(layout)}")
    return RayExecutor(sweep, store, recorder, layout, storage)


def _studies(sweep: Sweep, storage: str, recorder: SweepRecorder, log) -> Callable[[int], StudyRef] | None:
    """A searched sweep's Optuna studies: one per grid point, in an RDB storage (see study.py)."""
    if not sweep.spec.search:
        return None
    url = storage_url(sweep, storage)
    names = [study_name(sweep.spec.name, recorder.sweep_run_id, i) for i in range(len(sweep.points))]
    recorder.client.set_tag(recorder.sweep_run_id, "wrapperdist.optuna_storage", url)
    recorder.client.set_tag(recorder.sweep_run_id, "wrapperdist.optuna_studies", ", ".join(names))
    log(f"Optuna studies {', '.join(names)} in {url}  (look: optuna-dashboard {url})")
    return lambda i: StudyRef(url, names[i])


def run_sweep(path: str | Path, local: bool = False, resume: bool = False, address: str | None = None,
              overrides: Sequence[str] = (), log=print, progress: SweepProgress | None = None) -> dict[str, Any]:
    """Run a sweep file (with `--set` overrides); `progress` shows it live (default: on stderr)."""
    sweep = load_sweep(path, overrides)
    return run_loaded(sweep, make_plan(sweep), local=local, resume=resume, address=address, overrides=overrides,
                      log=log, progress=progress)


def refuse_unrunnable(sweep: Sweep, local: bool, address: str | None) -> None:
    """What cannot run here is refused before any run is created (one line naming the field)."""
    search = sweep.spec.search
    if local and search is not None and search.asha is not None:
        raise ConfigError(f"{sweep.source}: search.asha: ASHA early stopping needs Ray Tune, and --local runs "
                          "without it; drop --local, or remove search.asha")
    if local or not address:  # our own machine: its GPUs are the ones there are (a cluster is checked on attach)
        layout_for(sweep)


def run_loaded(sweep: Sweep, plan: Plan, local: bool = False, resume: bool = False, address: str | None = None,
               overrides: Sequence[str] = (), log=print, progress: SweepProgress | None = None,
               outside_parents: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `plan` (of `sweep`) in-process (`local`) or on Ray, recorded in MLflow under one sweep run.
    `outside_parents`: node key -> MLflow run id, for plan nodes whose input stage was recorded
    outside this sweep (`wrapperdist analyze` of an earlier fine-tune): their runs nest there."""
    target = resolve_address(address)  # used only on Ray (not --local)
    if target.note and not local:
        log(target.note)  # first, so a wrong cluster (or a RAY_ADDRESS ignored) is seen at once
    refuse_unrunnable(sweep, local, target.address)
    storage = sweep.spec.storage_path
    if "://" not in storage:
        storage = str(Path(storage).resolve())  # Ray wants absolute paths; so does the store
    store = Store(storage)
    tracking = sweep.points[0].tracking  # a grid point always exists: an empty grid is one point
    tracker = Tracker(tracking.experiment, tracking.tracking_uri)
    params = flatten({"sweep": sweep.spec.model_dump(mode="json")})
    recorder = SweepRecorder(tracker, sweep.spec.name, _spec_hash(sweep), params, store, resume=resume,
                             outside_parents=outside_parents)
    run_id = recorder.sweep_run_id
    tracker.client.set_tag(run_id, STORE_TAG, store.uri)
    if overrides:
        tracker.client.set_tag(run_id, OVERRIDES_TAG, " ".join(overrides))
    log_spec(tracker.client, run_id, sweep)
    log(f"sweep {sweep.spec.name}: MLflow run {run_id} in {tracker.uri}\n  "
        f"{ui_hint(tracker.uri, tracker.experiment_id, run_id)}")
    watcher = progress or SweepProgress()
    recorder.listeners.append(watcher)
    studies = _studies(sweep, storage, recorder, log)
    pid_file = _ray_pid_file(Path(storage) if "://" not in storage else Path.cwd(), sweep.spec.name)
    if resume and not local:
        reaped = _reap_orphans(pid_file)
        if reaped:
            log(f"ended {reaped} Ray process(es) left behind by the interrupted driver")
    start = time.perf_counter()
    counts = _execute(sweep, plan, store, recorder, storage, pid_file, target, local, watcher, studies, log)
    wall = time.perf_counter() - start
    return {"sweep_run_id": run_id, "tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
            "wall_s": round(wall, 1), "store": store.uri, "runs": dict(recorder.finished), **counts}


def _execute(sweep: Sweep, plan: Plan, store: Store, recorder: SweepRecorder, storage: str, pid_file: Path,
             target: RayTarget, local: bool, watcher: SweepProgress, studies, log) -> dict[str, int]:
    """Run the phases; whatever happens, close the sweep run with its status and end our Ray."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    status = "FAILED"
    try:
        runner: Executor
        if local:
            # one trial at a time, so it gets every core
            layout = layout_for(sweep)
            layout = replace(layout, threads_per_trial=layout.cpus, max_concurrent=1, train_workers=0)
            runner = LocalExecutor(sweep, store, recorder, layout)
        else:
            runner = _ray_executor(sweep, store, recorder, storage, pid_file, target, log)
        counts = execute(plan, sweep, runner, progress=log, on_phase=watcher.phase, studies=studies)
        status = "FINISHED"
        return counts
    except (KeyboardInterrupt, _Terminated, SystemExit):  # Ctrl-C, or SIGTERM (ours or Ray's handler)
        status = "KILLED"
        raise
    finally:
        summary = watcher.close()
        log(summary)
        set_description(recorder.client, recorder.sweep_run_id, sweep.spec.name, status, summary)
        recorder.close(status)
        signal.signal(signal.SIGTERM, previous)
        if not local:
            import ray

            if ray.is_initialized() and not target.address:  # ours to end; a cluster is not
                ray.shutdown()
                pid_file.unlink(missing_ok=True)
