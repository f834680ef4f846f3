"""The cluster path on a local multi-node Ray cluster (Ray's fake autoscaling provider, see
wrapperdist/sweep/local_cluster.py): a sweep submitted as a Ray job to a head with 0 CPUs, worker
nodes added by the autoscaler, a worker node killed mid-sweep, MLflow as a server on 127.0.0.1
that only the driver talks to, and every Ray process gone afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from conftest import TINY

from wrapperdist.sweep.local_cluster import LocalCluster, worker_type

# The local clusters run one at a time, on one xdist worker (`--dist loadgroup`): two fake autoscalers
# on 2 cores would each wait for CPU the other holds, and the node-loss test times a kill.
pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("local_cluster")]
BIN = Path(sys.executable).parent
HEAD = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"  # the fake provider's head node id


class Tripwire:
    """A TCP listener that counts connections: the MLflow URI every *trial* sees. Only the driver is
    told the real server's address, so any trial that talked to MLflow would show up here."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.hits = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The tracking server as the head runs it: 127.0.0.1 only, artifacts on storage of its own."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")],
        stdout=(root / "server.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    _wait_port(port, server, root / "server.log")
    yield f"http://127.0.0.1:{port}"
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def tripwire():
    wire = Tripwire()
    yield wire
    wire.sock.close()


@pytest.fixture
def cluster(request, tmp_path, tripwire):
    """Head with 0 CPUs; worker nodes of 1 CPU, none at start, at most 2: exactly what a 2-worker Train
    run needs, no spare node (a lost node must be replaced, and the dead run's placement group freed,
    before the retry can start)."""
    most = getattr(request, "param", 2)
    c = LocalCluster(tmp_path / "cluster", {"cpu_worker": worker_type(cpus=1, max_workers=most)},
                     env_extra={"MLFLOW_TRACKING_URI": tripwire.uri})
    c.start()
    yield c
    c.stop(keep_logs=tmp_path / "ray_logs")  # pytest keeps the last runs' tmp dirs: logs to read
    assert not c.processes(), "Ray processes of the test cluster outlived it"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)


def write_sweep(tmp_path: Path, resources: dict, grid: dict, steps: int = 30, ft_steps: int | None = None) -> Path:
    pretrain = {**TINY["pretrain"], "optim": {**TINY["pretrain"]["optim"], "steps": steps, "eval_every": steps}}
    finetune = TINY["finetune"]
    if ft_steps:  # trials long enough that the autoscaler's second node arrives while they run
        finetune = {"optim": {**TINY["finetune"]["optim"], "steps": ft_steps, "eval_every": ft_steps}}
    experiment = {**TINY, "pretrain": pretrain, "finetune": finetune,
                  "tracking": {"experiment": f"cluster-{tmp_path.name}"}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment))
    path = tmp_path / "sweep.yaml"
    # storage on a path every node reaches (one machine here; s3:// on a real cluster)
    path.write_text(yaml.safe_dump({"name": "cl", "experiment": "exp.yaml", "storage_path": str(tmp_path / "shared"),
                                    "analyze": False, "grid": grid, "resources": resources}))
    return path


def submit(cluster: LocalCluster, sweep: Path, tracking_uri: str) -> str:
    """`ray job submit` as a user would; the driver alone is given the tracking server's address."""
    job_id = f"sweep-{int(time.time() * 1000)}"
    env = {**os.environ, **cluster.client_env()}
    subprocess.run([str(BIN / "ray"), "job", "submit", "--no-wait", "--submission-id", job_id, "--",
                    "env", f"MLFLOW_TRACKING_URI={tracking_uri}", "wrapperdist", "sweep", str(sweep)],
                   env=env, check=True, capture_output=True, text=True, timeout=120)
    return job_id


def job_status(cluster: LocalCluster, job_id: str) -> str:
    out = subprocess.run([str(BIN / "ray"), "job", "status", job_id], env={**os.environ, **cluster.client_env()},
                         capture_output=True, text=True, timeout=60).stdout.lower()
    for status in ("succeeded", "failed", "stopped"):  # "Job '<id>' succeeded"
        if f"job '{job_id}' {status}" in out:
            return status.upper()
    return "RUNNING"


def wait_job(cluster: LocalCluster, job_id: str, timeout: float, until=None) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if until is not None and until():
            return "CONDITION"
        status = job_status(cluster, job_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(2)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


def job_logs(cluster: LocalCluster, job_id: str) -> str:
    return subprocess.run([str(BIN / "ray"), "job", "logs", job_id], env={**os.environ, **cluster.client_env()},
                          capture_output=True, text=True, timeout=60).stdout


def cluster_state(cluster: LocalCluster) -> str:
    """What a failed cluster test needs besides the job's log: the nodes, the pending demand and the
    autoscaler's last words (the logs themselves are copied to the test's tmp dir at teardown)."""
    status = subprocess.run([str(BIN / "ray"), "status", "-v"], env={**os.environ, **cluster.client_env()},
                            capture_output=True, text=True, timeout=60)
    monitor = cluster.temp_dir / "session_latest" / "logs" / "monitor.log"
    lines = monitor.read_text().splitlines() if monitor.is_file() else ["(no monitor.log)"]
    tail = "\n".join([line for line in lines if "legacy field" not in line][-40:])  # noise every second
    return f"\n--- ray status ---\n{status.stdout[-3000:]}{status.stderr[-500:]}\n--- monitor.log ---\n{tail}"


def stage_runs(uri: str, experiment: str) -> list:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_sweep_job_survives_losing_a_worker_node_at_full_size(tmp_path, cluster, mlflow_server, tripwire):
    # 1 pretrain + 1 fine-tune, each a Ray Train run of 2 DDP workers: on 1-CPU nodes one run spans
    # both worker nodes the cluster may have, so losing either hits it, and its retry needs both
    # again. The start timeout comes from the spec (no launcher file sets it for this driver).
    # 300 s: under CI's load (three xdist workers on 2 cores) the replacement node's boot plus the retry's
    # worker start has taken more than 120 s (stop 27's CI: both retries timed out at 120 s)
    sweep = write_sweep(tmp_path, {"train_workers": 2, "max_failures": 2, "worker_start_timeout_s": 300}, {},
                        steps=2500)
    job = submit(cluster, sweep, mlflow_server)
    # wait until the pretrain's Train workers run, then kill the raylet of a node one of them is on
    status = wait_job(cluster, job, 240, until=lambda: cluster.nodes_running("RayTrainWorker"))
    assert status == "CONDITION", job_logs(cluster, job)[-4000:]
    time.sleep(2)  # into training, not its set-up (2500 steps: about 25 s of it)
    # the worst node to lose: the one with the trial and its Train controller (Ray places the controller
    # on the trial's node) as well as a worker. The controller dies with it, so nothing of Ray Train is
    # left to free the run's placement group, and Ray re-reserves the lost bundle on the replacement
    victims = sorted(set(cluster.nodes_running("TrainController")) & set(cluster.nodes_running("RayTrainWorker"))
                     - {HEAD})
    assert victims and not list((tmp_path / "shared" / "store").glob("pretrain-*/DONE")), "killed too late"
    before = set(cluster.node_ids())  # every node alive at the kill
    assert len(before - {HEAD}) == 2, before  # the cluster is at its full size
    cluster.kill_node(victims[0])
    killed_at = time.time()
    status = wait_job(cluster, job, 900)
    logs = job_logs(cluster, job)
    assert status == "SUCCEEDED", logs[-4000:] + cluster_state(cluster)

    runs = stage_runs(mlflow_server, f"cluster-{tmp_path.name}")
    stages = [r for r in runs if r.data.tags["wrapperdist.stage"] != "sweep"]
    assert not [r.info.run_name for r in runs if r.info.status != "FINISHED"]  # none RUNNING, none FAILED
    keys = sorted(r.data.tags["wrapperdist.node_key"] for r in stages)
    store = tmp_path / "shared" / "store"
    assert keys == sorted(p.parent.name for p in store.glob("*/DONE")) and len(keys) == 2  # one run per stage
    for folder in store.iterdir():  # nothing half-written: every stage folder complete and loadable
        assert (folder / "DONE").is_file(), folder
        torch.load(folder / "model.pt", weights_only=False)
    for run in stages:  # trials and their Train workers ran on worker nodes, never on the 0-CPU head
        tags = run.data.tags
        assert tags["wrapperdist.ray_node_id"] != HEAD and tags["wrapperdist.host"] == socket.gethostname()
        assert HEAD not in tags["wrapperdist.train_nodes"] and len(tags["wrapperdist.train_nodes"].split(",")) == 2
    pretrain = next(r for r in stages if r.data.tags["wrapperdist.stage"] == "pretrain")
    retried_on = set(pretrain.data.tags["wrapperdist.train_nodes"].split(","))
    assert victims[0] not in retried_on  # it finished elsewhere: on the node that replaced the lost one
    assert retried_on - before, (retried_on, before)
    print(f"node loss: sweep done {time.time() - killed_at:.0f} s after the kill; retry on {sorted(retried_on)}")
    assert list((tmp_path / "shared" / "cl-pretrain").glob("*/error.txt"))  # Tune saw it fail and retried
    assert tripwire.hits == 0  # no trial ever talked to MLflow
    # Ray Train's resource coordinator lives on the head (pinned by the driver), not on a node that may die
    coordinators = json.loads(subprocess.run(
        [str(BIN / "ray"), "list", "actors", "--filter", "class_name=_AutoscalingCoordinatorActor", "--format", "json"],
        env={**os.environ, **cluster.client_env()}, capture_output=True, text=True, timeout=60, check=True).stdout)
    assert [a["node_id"] for a in coordinators] == [HEAD], coordinators


def test_concurrency_grows_with_the_cluster(tmp_path, cluster, mlflow_server, tripwire):
    """In-process trials, 1 CPU each, on a cluster that starts with 0 CPUs for trials. A cap set from
    the resources at start would run them one at a time; here the autoscaler's nodes fill up."""
    sweep = write_sweep(tmp_path, {"cpus_per_trial": 1}, {"finetune.optim.lr": [1e-3, 3e-4, 1e-4, 3e-5]},
                        ft_steps=600)
    job = submit(cluster, sweep, mlflow_server)
    status = wait_job(cluster, job, 300)
    logs = job_logs(cluster, job)
    assert status == "SUCCEEDED", logs[-6000:]
    assert "Ray cluster: 0 CPUs" in logs and "no cap" in logs
    runs = [r for r in stage_runs(mlflow_server, f"cluster-{tmp_path.name}")
            if r.data.tags["wrapperdist.stage"] == "finetune"]
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["wrapperdist.ray_node_id"] for r in runs}) == 2  # both worker nodes used
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    overlapping = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlapping >= 2, spans  # trials ran at once, on nodes that did not exist at start
    assert tripwire.hits == 0
