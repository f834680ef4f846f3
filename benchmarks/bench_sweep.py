"""Sweep-level figures, in one run:
  1. sweep utilisation of a real local Ray sweep: Σ trial compute (trial wall × its torch threads)
     / (sweep wall × CPUs), where the sweep wall includes starting Ray and every phase;
  2. Ray Train with 2 DDP workers vs in-process training on the same pretraining work (tokens/s);
  3. how many pretrains the plan of a 3 priors × 3 LRs grid runs.

    python benchmarks/bench_sweep.py [--trials 8] [--steps 400]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import common  # noqa: F401 - puts the project on sys.path
import mlflow
import yaml

from wrapperdist.sweep.driver import run_sweep
from wrapperdist.sweep.plan import make_plan
from wrapperdist.sweep.spec import load_sweep

EXPERIMENT = {
    "name": "bench", "seed": 0,
    "setting": {"name": "pcfg", "window": 32, "count_window": 20},
    "model": {"n_layer": 3, "n_head": 4, "d_model": 64},
    "pretrain": {"optim": {"lr": 3e-3, "steps": 200, "batch_size": 128, "eval_every": 100}},
    "finetune": {"optim": {"lr": 3e-4, "steps": 400, "batch_size": 96, "eval_every": 100}},
    "eval": {"samples": 500},
    "tracking": {"experiment": "bench"},
}


def write(folder: Path, spec: dict, experiment: dict) -> Path:
    (folder / "exp.yaml").write_text(yaml.safe_dump(experiment))
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump({"experiment": "exp.yaml", "storage_path": str(folder / "results"), **spec}))
    return path


def utilisation(folder: Path, trials: int, steps: int) -> None:
    lrs = [3e-4 * (1.5 ** i) for i in range(trials)]
    experiment = {**EXPERIMENT, "finetune": {"optim": {**EXPERIMENT["finetune"]["optim"], "steps": steps}}}
    path = write(folder, {"name": "util", "grid": {"finetune.optim.lr": lrs}, "analyze": False,
                          "resources": {"cpus": 2, "cpus_per_trial": 1}}, experiment)
    start = time.perf_counter()
    summary = run_sweep(path, log=lambda _: None)
    wall = time.perf_counter() - start
    runs = mlflow.search_runs(experiment_names=["bench"], output_format="list")
    stage_runs = [r for r in runs if r.data.tags.get("wrapperdist.stage") in ("pretrain", "finetune")]
    # a trial's compute is its wall time × its torch threads (a phase with fewer nodes than slots
    # gives its trials more threads)
    compute = sum((r.info.end_time - r.info.start_time) / 1000 * int(r.data.params.get("runtime.threads", 1))
                  for r in stage_runs)
    print(f"1. sweep utilisation: {len(stage_runs)} trials (1 pretrain + {trials} fine-tunes of {steps} steps), "
          f"up to 2 concurrent trials on 2 CPUs")
    print(f"   trial compute {compute:.1f} CPU-s / (wall {wall:.1f} s × 2 CPUs) = {compute / (2 * wall):.1%}  "
          f"(target >= 85%; wall includes Ray start-up: {summary['wall_s']:.1f} s inside the driver)")


def train_throughput(folder: Path, steps: int) -> None:
    from wrapperdist.config import ExperimentConfig
    from wrapperdist.setting import Runtime
    from wrapperdist.settings.registry import setting_for
    from wrapperdist.sink import MemorySink
    from wrapperdist.stages import run_pretrain
    from wrapperdist.sweep.plan import pretrain_node
    from wrapperdist.sweep.ray_train import ray_train_backend
    from wrapperdist.sweep.train_runs import train_runs

    experiment = {**EXPERIMENT, "pretrain": {"optim": {**EXPERIMENT["pretrain"]["optim"], "steps": steps,
                                                       "eval_every": 0}}}
    cfg = ExperimentConfig.model_validate(experiment)
    setting = setting_for(cfg)
    tokens = steps * cfg.pretrain.optim.batch_size * setting.build_model(cfg).shape.seq_len
    start = time.perf_counter()
    run_pretrain(setting, cfg, folder / "inproc", MemorySink(), Runtime(threads=2, progress=False))
    inproc = tokens / (time.perf_counter() - start)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        backend = ray_train_backend(lambda _: None, workers=2, use_gpu=False, storage_path=str(folder / "train"),
                                    run_name="bench", runs=train_runs(), trial_id="bench", start_timeout_s=120)
        start = time.perf_counter()
        backend(pretrain_node(cfg), None, folder / "ddp")
        ddp_total = time.perf_counter() - start
    finally:
        ray.shutdown()
    print(f"2. pretraining {steps} steps ({tokens:,} tokens), same global batch:")
    print(f"   in-process, 2 torch threads        : {inproc:10,.0f} tokens/s")
    print(f"   Ray Train, 2 DDP workers × 1 thread: {tokens / ddp_total:10,.0f} tokens/s end to end "
          f"(incl. the TorchTrainer's start-up) = {tokens / ddp_total / inproc:.2f}x")


def pretrain_count(folder: Path) -> None:
    spec = {"name": "count", "grid": {"setting.prior": ["low", "medium", "high"],
                                      "finetune.optim.lr": [1e-3, 3e-4, 1e-4]}}
    for analyze in (False, True):
        plan = make_plan(load_sweep(write(folder, {**spec, "analyze": analyze}, EXPERIMENT)))
        extra = " (3 of them the Scr.+FT controls the analyses need)" if analyze else ""
        print(f"3. 3 priors × 3 LRs grid, analyze={analyze}: {len(plan.pretrain)} pretrains, "
              f"{len(plan.finetune)} fine-tunes{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--train-steps", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        pretrain_count(folder)
        utilisation(folder, args.trials, args.steps)
        train_throughput(folder, args.train_steps)


if __name__ == "__main__":
    main()
