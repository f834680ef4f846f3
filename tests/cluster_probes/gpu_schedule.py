"""Run as a driver on the local cluster (tests/test_cluster_gpu.py): requests GPUs the way the
project does and prints, as JSON, where Ray placed each trial / Train worker and which GPU it got.
No CUDA is touched: the fake nodes only advertise GPUs."""

from __future__ import annotations

import json
import time

import ray
from ray import tune
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

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
    print("RESULT " + json.dumps({"trials": [r.metrics for r in trials],
                                  "train_rank0": result.return_value, "train_error": str(result.error or "")}))


if __name__ == "__main__":
    import sys

    main(sys.argv[1])
