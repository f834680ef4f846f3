"""Ray Train adapter: run a training node under `TorchTrainer` with N data-parallel workers (DDP
over gloo on CPU, NCCL on GPU). The stage code is the plain one (`stages.run_stage`); this file only
supplies the worker's rank and the DDP wrapper, and moves metrics and the checkpoint through Ray.

Reports, live: each evaluation point reaches Tune as it happens, so a scheduler (ASHA) can stop a
Train run early. Train V2's `ray.train.report` cannot carry them: it is a barrier every worker must
reach equally often (the loop evaluates on rank 0 only) and it waits for the controller's poll. So
rank 0's sink is the in-process one (`ReportingSink`), whose report hands each progress report to
`TrainRuns`, a driver-owned actor, without waiting; the trial runs `trainer.fit()` in a thread and,
from its own thread, drains `TrainRuns` and calls its report (tune.report) point by point. The
checkpoint (model + the full history, training loss included) still comes back once, at the end,
through Ray's checkpoint; the recorder replays only the points that were not sent live.

The Train runs' registry, and how a stopped or failed run's resources are freed: train_runs.py."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer, prepare_model
from ray.util.placement_group import get_current_placement_group

from wrapperdist.setting import Runtime
from wrapperdist.settings.registry import setting_for
from wrapperdist.sink import MemorySink
from wrapperdist.stages import run_stage
from wrapperdist.sweep.cluster import (
    WORKER_START_TIMEOUT_ENV,
    PlacementReport,
    gather_worker_nodes,
    train_failure_config,
    train_worker_resources,
)
from wrapperdist.sweep.plan import Node
from wrapperdist.sweep.train_runs import STOP_TIMEOUT_S
from wrapperdist.sweep.trials import Report, ReportingSink, TrainBackend
from wrapperdist.train.distributed import Distributed

log = logging.getLogger(__name__)

# The controller's default 2 s poll adds seconds to every run's start and end (reports do not wait for it).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
class _LiveReports:
    """Rank 0's report function: posts to `TrainRuns` without waiting (calls from one process run in
    order); `flush` waits for the last post, so all of them are in before the worker returns."""

    def __init__(self, runs, key: str):
        self.runs, self.key, self.last = runs, key, None

    def placed(self) -> None:
        self.last = self.runs.placed.remote(self.key, get_current_placement_group())

    def started(self, nodes: list[str]) -> None:
        self.last = self.runs.started.remote(self.key, nodes)

    def __call__(self, result: dict[str, Any]) -> None:
        self.last = self.runs.put.remote(self.key, result)

    def flush(self) -> None:
        if self.last is not None:
            ray.get(self.last)


def _worker(config: dict[str, Any]) -> None:
    live = _LiveReports(config["runs"], config["key"])
    live.placed()  # first, on every rank: what the driver frees if this run dies (TrainRuns.release_trial)
    ctx = ray.train.get_context()
    dist = Distributed(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), wrap=prepare_model)
    node: Node = config["node"]
    setting = setting_for(node.config)
    init = Path(config["init"]) if config["init"] else None
    nodes = gather_worker_nodes()  # a collective: every rank, before any may return
    sink = MemorySink()  # other ranks log nothing (the loop evaluates and logs on rank 0)
    if dist.is_main:
        live.started(nodes)
        sink = ReportingSink(node, live, setting.eval_metrics)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run_stage(node.kind, setting, node.config, init, out, sink, Runtime(dist=dist, threads=1, progress=False),
                  node.budget)
        if dist.is_main:
            live.flush()
            (out / "history.json").write_text(json.dumps(sink.metrics))
            ray.train.report({"done": 1}, checkpoint=ray.train.Checkpoint.from_directory(str(out)))
        else:
            ray.train.report({"done": 1}, checkpoint=None)


class TrainCapacityError(RuntimeError):
    """A stage's Ray Train run never got its workers' resources: the cluster cannot hold them, or
    they did not come back (a lost node not replaced) within resources.worker_start_timeout_s. The
    message is one line, the one the sweep's summary prints for the stage."""


# Ray says why a worker group did not start only through internal exception classes
# (ray.train.v2._internal.exceptions), carried as the public ControllerError's `controller_failure`.
# Matched by name; tests/test_ray_sweep.py fails when a Ray upgrade renames them.
CAPACITY_FAILURES = ("WorkerGroupStartupTimeoutError", "InsufficientClusterResourcesError")


def capacity_shortfall(error: BaseException) -> bool:
    """Whether `trainer.fit()` failed because its worker group never got its resources."""
    return type(getattr(error, "controller_failure", None)).__name__ in CAPACITY_FAILURES


def capacity_message(node: Node, workers: int, per_worker: dict[str, float], timeout_s: float,
                     available: dict[str, float]) -> str:
    need = ", ".join(f"{k} {v:g}" for k, v in per_worker.items())
    free = ", ".join(f"{k} {available.get(k, 0):g}" for k in per_worker) or "nothing"
    return (f"{node.kind} '{node.name}': no room for its Ray Train run: needs {workers} × {{{need}}}, "
            f"{{{free}}} free after {timeout_s:g} s (resources.worker_start_timeout_s); "
            f"`wrapperdist sweep --resume` runs it once the nodes are back")


def ray_train_backend(report: Report, workers: int, use_gpu: bool, storage_path: str, run_name: str, runs,
                      trial_id: str, start_timeout_s: float) -> TrainBackend:
    def run(node: Node, init: Path | None, out_dir: Path):
        key = ray.get(runs.open.remote(trial_id))
        # Ray Train reads its start timeout from the environment only, and passes the trainer's
        # process's value on to its controller: set here, in the trial's own process, from the spec,
        # so it holds on any cluster the driver attaches to (not only where a launcher file sets it).
        os.environ[WORKER_START_TIMEOUT_ENV] = str(start_timeout_s)
        per_worker = train_worker_resources(use_gpu)  # 0.01 CPU is the Tune trial's own share
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"node": node, "init": str(init) if init else "", "runs": runs, "key": key},
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                   resources_per_worker=per_worker),
            run_config=ray.train.RunConfig(
                name=f"{run_name}-{node.key}", storage_path=storage_path,
                # a trial that cannot get its workers errors out instead of waiting forever; a lost
                # worker fails the trial, which Tune retries (see sweep/cluster.py)
                failure_config=train_failure_config(),
            ),
        )
        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as e:  # noqa: BLE001 - re-raised in the trial's thread
                outcome["error"] = e
            finally:
                ray.get(runs.ended.remote(key))

        fitting = threading.Thread(target=fit, name=f"fit {node.name}", daemon=True)
        fitting.start()
        try:
            ended = False
            while not ended:
                items, ended = ray.get(runs.take.remote(key, 1.0))
                for kind, value in items:
                    if kind == "nodes" and isinstance(report, PlacementReport):
                        report.train_workers_ran_on(value)
                    elif kind == "report":
                        report(value)  # tune.report: where a scheduler's stop reaches this trial
        except Exception:
            # this trial fails while its Train run goes on: end the run before the trial's actor goes
            ray.get(runs.stop.remote(key, STOP_TIMEOUT_S))
            raise
        fitting.join()
        if "error" in outcome:
            ray.get(runs.release_trial.remote(trial_id))  # the driver does it too, if this process dies
            if capacity_shortfall(outcome["error"]):
                raise TrainCapacityError(capacity_message(node, workers, per_worker, start_timeout_s,
                                                          ray.available_resources())) from outcome["error"]
            raise outcome["error"]
        out_dir.mkdir(parents=True, exist_ok=True)
        with outcome["result"].checkpoint.as_directory() as ckpt:
            history = json.loads((Path(ckpt) / "history.json").read_text())
            (out_dir / "model.pt").write_bytes((Path(ckpt) / "model.pt").read_bytes())
        last = max(step for step, _ in history)
        final = {k: v for step, m in history if step == last for k, v in m.items()}
        return final, history

    return run
