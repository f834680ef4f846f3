"""The same sweep on a local autoscaling Ray cluster (wrapperdist/sweep/local_cluster.py) with at
most 1 worker node, then with at most 2: wall time of each (job submitted → job finished, node
start-up by the autoscaler included), their ratio, and how many trials ran at once (the most
fine-tune runs open at the same time in MLflow; the driver opens a run at the trial's first
report and closes it at its last).

Each worker node has 1 CPU and each trial asks for 1 CPU (in-process training, 1 torch thread),
so at most one trial per node. On a 2-core machine the head's own processes share the cores with
the two nodes: the ratio is a floor of what separate machines would give.

    python benchmarks/bench_cluster.py [--finetunes 4] [--steps 1500]

Short trials measure Ray's per-trial overhead, not the nodes: with 6 fine-tunes of 400 steps the
ratio was 1.01x (2 trials at once, each slower); with 4 of 1500 steps, 1.48x (both on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401 - puts the project on sys.path
import mlflow
import yaml

from wrapperdist.sweep.local_cluster import LocalCluster, worker_type

EXPERIMENT = {
    "name": "bench-cluster", "seed": 0,
    "setting": {"name": "pcfg", "window": 24, "count_window": 12, "index_k": 3, "spurious_fraction": 0.5},
    "model": {"n_layer": 2, "n_head": 2, "d_model": 32},
    "pretrain": {"optim": {"lr": 3e-3, "steps": 100, "batch_size": 64, "eval_every": 100}},
    "finetune": {"optim": {"lr": 1e-3, "steps": 400, "batch_size": 64, "eval_every": 200}},
    "eval": {"samples": 128},
}
RAY = str(Path(sys.executable).parent / "ray")


def write_sweep(root: Path, finetunes: int, steps: int) -> Path:
    experiment = {**EXPERIMENT, "tracking": {"experiment": "bench-cluster"}}
    experiment["finetune"]["optim"]["steps"] = steps
    (root / "exp.yaml").write_text(yaml.safe_dump(experiment))
    lrs = [round(1e-3 * 0.8**i, 8) for i in range(finetunes)]
    spec = {"name": "benchcl", "experiment": "exp.yaml", "storage_path": str(root / "shared"), "analyze": False,
            "grid": {"finetune.optim.lr": lrs}, "resources": {"cpus_per_trial": 1}}
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_on_cluster(root: Path, max_nodes: int, finetunes: int, steps: int) -> dict[str, float]:
    root.mkdir(parents=True)
    sweep = write_sweep(root, finetunes, steps)
    cluster = LocalCluster(root / "cluster", {"cpu_worker": worker_type(cpus=1, max_workers=max_nodes)}).start()
    try:
        env = {**os.environ, **cluster.client_env()}
        tracking = f"sqlite:///{root / 'mlflow.db'}"
        start = time.perf_counter()
        done = subprocess.run([RAY, "job", "submit", "--", "env", f"MLFLOW_TRACKING_URI={tracking}",
                               "wrapperdist", "sweep", str(sweep)], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(done.stdout[-4000:] + done.stderr[-2000:])
    finally:
        cluster.stop()
    mlflow.set_tracking_uri(tracking)
    runs = [r for r in mlflow.search_runs(experiment_names=["bench-cluster"], output_format="list")
            if r.data.tags.get("wrapperdist.stage") == "finetune"]
    assert len(runs) == finetunes and all(r.info.status == "FINISHED" for r in runs)
    spans = [(r.info.start_time, r.info.end_time) for r in runs]
    concurrent = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    nodes = len({r.data.tags["wrapperdist.ray_node_id"] for r in runs})
    return {"wall_s": wall, "concurrent": concurrent, "nodes": nodes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetunes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1500, help="fine-tuning steps per trial")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        one = run_on_cluster(Path(tmp) / "one", 1, args.finetunes, args.steps)
        two = run_on_cluster(Path(tmp) / "two", 2, args.finetunes, args.steps)
    print(f"sweep: 1 pretrain + {args.finetunes} fine-tunes ({args.steps} steps), 1 CPU per trial, 1-CPU worker nodes")
    for label, r in (("max 1 worker node ", one), ("max 2 worker nodes", two)):
        print(f"{label}: wall {r['wall_s']:6.1f} s, at most {r['concurrent']} fine-tune(s) at once, "
              f"fine-tunes ran on {r['nodes']} node(s)")
    print(f"wall time 1 node / 2 nodes: {one['wall_s'] / two['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
