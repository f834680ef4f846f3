"""Ray Train adapter: run a training node under `TorchTrainer` with N data-parallel workers (DDP
over gloo on CPU, NCCL on GPU). The stage code is the plain one (`stages.run_stage`); this file only
supplies the worker's rank and the DDP wrapper, and moves metrics and the checkpoint through Ray.

Reports: Train V2's `ray.train.report` is a barrier every worker must reach equally often, and it
waits for the controller's poll, so workers report once, at the end, with the checkpoint (model +
the evaluation history); the Tune trial then replays the history to the recorder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import ray.train
from ray.train.torch import TorchTrainer, prepare_model

from wrapperdist.setting import Runtime
from wrapperdist.settings.registry import setting_for
from wrapperdist.sink import MemorySink
from wrapperdist.stages import run_stage
from wrapperdist.sweep.cluster import NodeReport, gather_worker_nodes, train_failure_config, train_worker_resources
from wrapperdist.sweep.plan import Node
from wrapperdist.sweep.trials import Report, ReportingSink, TrainBackend
from wrapperdist.train.distributed import Distributed

# The controller's default 2 s poll would add seconds to every run; the trial reports once anyway.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")


def _worker(config: dict[str, Any]) -> None:
    ctx = ray.train.get_context()
    dist = Distributed(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), wrap=prepare_model)
    node: Node = config["node"]
    init = Path(config["init"]) if config["init"] else None
    sink = MemorySink()
    nodes = gather_worker_nodes()  # a collective: every rank, before any may return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        run_stage(node.kind, setting_for(node.config), node.config, init, out, sink,
                  Runtime(dist=dist, threads=1, progress=False), node.budget)
        if dist.is_main:
            (out / "history.json").write_text(json.dumps(sink.metrics))
            (out / "nodes.json").write_text(json.dumps(nodes))
            ray.train.report({"done": 1}, checkpoint=ray.train.Checkpoint.from_directory(str(out)))
        else:
            ray.train.report({"done": 1}, checkpoint=None)


def ray_train_backend(report: Report, workers: int, use_gpu: bool, storage_path: str, run_name: str) -> TrainBackend:
    def run(node: Node, init: Path | None, out_dir: Path):
        per_worker = train_worker_resources(use_gpu)  # 0.01 CPU is the Tune trial's own share
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"node": node, "init": str(init) if init else ""},
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                   resources_per_worker=per_worker),
            run_config=ray.train.RunConfig(
                name=f"{run_name}-{node.key}", storage_path=storage_path,
                # a trial that cannot get its workers errors out instead of waiting forever; a lost
                # worker fails the trial, which Tune retries (see sweep/cluster.py)
                failure_config=train_failure_config(),
            ),
        )
        result = trainer.fit()
        out_dir.mkdir(parents=True, exist_ok=True)
        with result.checkpoint.as_directory() as ckpt:
            history = json.loads((Path(ckpt) / "history.json").read_text())
            if isinstance(report, NodeReport):
                report.train_workers_ran_on(json.loads((Path(ckpt) / "nodes.json").read_text()))
            (out_dir / "model.pt").write_bytes((Path(ckpt) / "model.pt").read_bytes())
        replay = ReportingSink(node, report, setting_for(node.config).eval_metrics)
        for step, metrics in history:
            replay.log_metrics(metrics, step)
        last = max(step for step, _ in history)
        final = {k: v for step, m in history if step == last for k, v in m.items()}
        return final, history

    return run
