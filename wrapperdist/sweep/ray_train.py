"""Ray Train adapter: run a training node under `TorchTrainer` with N data-parallel workers (DDP
over gloo on CPU, NCCL on GPU). The stage code is the plain one; this file only supplies the
worker's rank and the DDP wrapper, and moves metrics and the checkpoint through Ray.

Reports: Train V2's `ray.train.report` is a barrier every worker must reach equally often, and it
waits for the controller's poll, so workers report once, at the end, with the checkpoint (model +
the evaluation history); the Tune trial then replays the history to the recorder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from wrapperdist.config import ExperimentConfig
from wrapperdist.sweep.cluster import NodeReport, gather_worker_nodes, train_failure_config, train_worker_resources
from wrapperdist.sweep.plan import Node
from wrapperdist.sweep.trials import Report, ReportingSink, TrainBackend

# The controller's default 2 s poll would add seconds to every run; the trial reports once anyway.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    from ray.train.torch import prepare_model

    from wrapperdist.sink import MemorySink
    from wrapperdist.stages import load_model, run_finetune, run_pretrain, run_reft
    from wrapperdist.train import save_checkpoint
    from wrapperdist.train.distributed import Distributed

    ctx = ray.train.get_context()
    dist = Distributed(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), wrap=prepare_model)
    cfg = ExperimentConfig.model_validate(config["experiment"])
    node = Node.from_dict(config["node"])
    init = Path(config["init"]) if config["init"] else None
    sink = MemorySink()
    nodes = gather_worker_nodes()  # a collective: every rank, before any may return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if node.kind == "pretrain":
            run_pretrain(cfg, out, sink, dist)
        elif node.kind == "finetune":
            run_finetune(cfg, init, out, sink, dist)
        else:
            model, meta = load_model(init)
            run_reft(cfg, model, cfg.analysis.reft.lr, sink, steps=node.budget, dist=dist)
            if dist.is_main:
                save_checkpoint(out / "model.pt", model, {**meta, "stage": "reft", "budget": node.budget})
        if dist.is_main:
            (out / "history.json").write_text(json.dumps(sink.metrics))
            (out / "nodes.json").write_text(json.dumps(nodes))
            ray.train.report({"done": 1}, checkpoint=ray.train.Checkpoint.from_directory(str(out)))
        else:
            ray.train.report({"done": 1}, checkpoint=None)


def ray_train_backend(report: Report, workers: int, use_gpu: bool, storage_path: str, run_name: str) -> TrainBackend:
    def run(node: Node, cfg: ExperimentConfig, init: Path | None, out_dir: Path):
        import ray.train
        from ray.train.torch import TorchTrainer

        per_worker = train_worker_resources(use_gpu)  # 0.01 CPU is the Tune trial's own share
        cfg_one_thread = cfg.model_copy(update={"torch_threads": 1, "progress": False})
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"experiment": cfg_one_thread.model_dump(mode="json"), "node": node.to_dict(),
                               "init": str(init) if init else ""},
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
        replay = ReportingSink(node, report)
        for step, metrics in history:
            replay.log_metrics(metrics, step)
        last = max(step for step, _ in history)
        final = {k: v for step, m in history if step == last for k, v in m.items()}
        return final, history

    return run
