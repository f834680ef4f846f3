"""The GPU path, priced without a GPU: how many GPU trials fit on the cluster at its largest, and
(on the local cluster, whose worker nodes advertise GPUs) where Ray puts trials that ask for whole
or fractional GPUs. The CUDA code itself only runs where a GPU exists (README: the GPU check)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wrapperdist.sweep.cluster import cluster_layout, max_nodes, train_trials_that_fit, train_worker_resources
from wrapperdist.sweep.executors import Layout
from wrapperdist.sweep.local_cluster import FAKE_HEAD_NODE_ID, LocalCluster, fake_cluster_config, worker_type

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_trials_are_capped_by_the_cluster_at_its_largest():
    from ray.autoscaler._private.util import prepare_config

    rendered = prepare_config(copy.deepcopy(yaml.safe_load((ROOT / "cluster.yaml").read_text())))
    gpu_trial = Layout(cpus=8, threads_per_trial=1, max_concurrent=1, train_workers=1, device="cuda")
    # 4 g5.xlarge workers, 1 GPU each, none running at start: 4 single-GPU trials, not 0 or 1
    assert cluster_layout(gpu_trial, None, rendered).max_concurrent == 4
    assert cluster_layout(gpu_trial, 2, rendered).max_concurrent == 2  # an explicit cap wins
    two_gpu = Layout(cpus=8, threads_per_trial=1, max_concurrent=1, train_workers=2, device="cuda")
    assert cluster_layout(two_gpu, None, rendered).max_concurrent == 2
    # the local test cluster: 2 one-CPU nodes fit one 2-worker CPU run, two 1-worker runs
    local = fake_cluster_config(1, {"w": worker_type(cpus=1, max_workers=2)})
    assert [n.get("CPU", 0) for n in max_nodes(local)] == [0, 1, 1]
    assert train_trials_that_fit(max_nodes(local), 2, False) == 1
    assert train_trials_that_fit(max_nodes(local), 1, False) == 2
    in_process = Layout(cpus=2, threads_per_trial=1, max_concurrent=2, train_workers=0)
    assert cluster_layout(in_process, None, local).max_concurrent == 0  # queued, no cap
    assert train_worker_resources(True, 0.25) == {"CPU": 1, "GPU": 0.25}


@pytest.mark.ray
@pytest.mark.xdist_group("local_cluster")  # one local cluster at a time (see test_cluster_local.py)
def test_gpu_requests_are_placed_on_gpu_nodes_and_packed(tmp_path):
    """(and the analysis memo crosses nodes: see the probe's docstring)"""
    cluster = LocalCluster(tmp_path / "cluster", {"gpu_worker": worker_type(cpus=2, gpus=1, max_workers=2)})
    cluster.start()
    try:
        env = {**os.environ, **cluster.client_env(), "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "cluster_probes" / "gpu_schedule.py"),
                               str(tmp_path / "results")], env=env, capture_output=True, text=True, timeout=300)
    finally:
        cluster.stop()
    assert not cluster.processes()
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    trials = result["trials"]
    assert len(trials) == 8
    for t in trials:  # every trial on a worker node (the head has no GPU), holding one GPU id
        assert t["node"] != FAKE_HEAD_NODE_ID and len(t["gpus"]) == 1
    # packing: the most trials that held the same GPU of the same node at the same time
    shared = max(sum(1 for u in trials if (u["node"], u["gpus"]) == (t["node"], t["gpus"])
                     and u["start"] <= t["start"] < u["end"]) for t in trials)
    assert shared >= 2, trials  # several quarter-GPU trials ran on one GPU at once (4 fit)
    assert shared <= 4  # never more than fit
    # an analysis memo written on one worker node is read on the other, not recomputed
    wrote, read = result["memo"]
    assert wrote["node"] != read["node"] and read["value"] == wrote["value"]
    assert read["value"]["by"] == wrote["node"]
    rank0 = result["train_rank0"]
    assert not result["train_error"] and rank0["node"] != FAKE_HEAD_NODE_ID and len(rank0["gpus"]) == 1
