"""Run as a driver on the local cluster (tests/test_cluster_gpu.py): requests GPUs the way the
project does and prints, as JSON, where Ray placed each trial / Train worker and which GPU it got.
No CUDA is touched: the fake nodes only advertise GPUs. While two worker nodes are up it also
writes an analysis memo on one node and reads it on the other (the memo lives in the sweep's
store on the shared storage path), which saves the suite a second cluster start."""

from __future__ import annotations

import json
import time

import ray
from ray import tune
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from wrapperdist.memo import Memo
from wrapperdist.store import Store
from wrapperdist.sweep.cluster import train_worker_resources


def placed() -> dict:
    return {"node": ray.get_runtime_context().get_node_id(), "gpus": [str(g) for g in ray.get_gpu_ids()],
            "start": time.time()}


def tiny_trial(config: dict) -> None:
    where = placed()
    time.sleep(3)  # long enough for the packed trials to overlap
    tune.report({**where, "end": time.time()})


def train_worker(config: dict) -> dict:
    # Train V2 keeps metrics only with a checkpoint; rank 0's return value comes back as is
    return {**placed(), "rank": ray.train.get_context().get_world_rank()}


@ray.remote(num_cpus=0.1)
def memo_on_this_node(storage: str, compute_allowed: bool) -> dict:
    """The memo's value for a fixed key: computed here only where `compute_allowed`."""
    def compute() -> dict:
        if not compute_allowed:
            raise AssertionError("recomputed: the memo written on the other node was not found")
        return {"curve": [(0, 0.25), (50, 0.9)], "by": ray.get_runtime_context().get_node_id()}

    value = Memo(Store(storage))("cluster-probe", {"weights": "w0"}, compute)
    return {"node": ray.get_runtime_context().get_node_id(), "value": value}


def memo_across_nodes(storage: str, nodes: list[str]) -> list[dict]:
    writer, reader = nodes[:2]
    pin = lambda node: NodeAffinitySchedulingStrategy(node, soft=False)  # noqa: E731
    wrote = ray.get(memo_on_this_node.options(scheduling_strategy=pin(writer)).remote(storage, True))
    read = ray.get(memo_on_this_node.options(scheduling_strategy=pin(reader)).remote(storage, False))
    return [wrote, read]


def main(storage: str) -> None:
    ray.init()
    # 8 tiny trials of a quarter GPU each: four share each GPU
    trials = tune.Tuner(tune.with_resources(tiny_trial, {"cpu": 0.1, "gpu": 0.25}),
                        param_space={"i": tune.grid_search(list(range(8)))},
                        run_config=tune.RunConfig(storage_path=storage, name="gpu-pack", verbose=0)).fit()
    # a Ray Train run with use_gpu and half a GPU per worker: both workers on one GPU; gloo,
    # because NCCL needs a real device (the project's GPU runs use Ray's default, NCCL)
    train = TorchTrainer(train_worker, scaling_config=ScalingConfig(
        num_workers=2, use_gpu=True, resources_per_worker=train_worker_resources(True, gpus=0.5)),
        torch_config=TorchConfig(backend="gloo"), run_config=RunConfig(storage_path=storage, name="gpu-train"))
    result = train.fit()
    workers = sorted({r.metrics["node"] for r in trials})
    memo = memo_across_nodes(f"{storage}/memo-store", workers) if len(workers) >= 2 else []
    print("RESULT " + json.dumps({"trials": [r.metrics for r in trials], "memo": memo,
                                  "train_rank0": result.return_value, "train_error": str(result.error or "")}))


if __name__ == "__main__":
    import sys

    main(sys.argv[1])
