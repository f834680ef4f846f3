"""Real Ray sweeps in subprocesses: kill -9 and --resume, Optuna + ASHA (over Ray Train DDP workers
too), and an MLflow tracking server on localhost. Pretrain, fine-tune and reFT through Ray Train:
tests/test_train_capacity.py."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import psutil
import pytest
import yaml
from conftest import TINY

pytestmark = pytest.mark.ray
WRAPPERDIST = [sys.executable, "-m", "wrapperdist.cli"]


def setup_sweep(tmp_path, spec, experiment_overrides=None) -> tuple[Path, dict]:
    experiment = {**TINY, "tracking": {"experiment": "raytest"}, **(experiment_overrides or {})}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "rt", "experiment": "exp.yaml",
                                    "storage_path": str(tmp_path / "results"), **spec}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    return path, env


def runs_of(tmp_path, experiment="raytest"):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_kill_and_resume(tmp_path):
    spec = {"grid": {"finetune.optim.lr": [1e-3, 3e-4], "setting.spurious_fraction": [0.0, 0.5]},
            "analyze": False, "revival_budgets": [30], "resources": {"cpus": 2, "cpus_per_trial": 1}}
    path, env = setup_sweep(tmp_path, spec, {"finetune": {**TINY["finetune"], "optim": {
        **TINY["finetune"]["optim"], "steps": 400, "eval_every": 100}}})
    store = tmp_path / "results" / "store"
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen([*WRAPPERDIST, "sweep", str(path)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.time() + 240
    while not list(store.glob("finetune-*/DONE")):
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "no fine-tune finished in time"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)  # the driver dies mid-phase, as with kill -9
    driver.wait()
    before = {p.parent.name: p.stat().st_mtime_ns for p in store.glob("*/DONE")}
    assert any(r.info.status == "RUNNING" for r in runs_of(tmp_path))
    orphans = json.loads((tmp_path / "results" / ".rt.ray-processes.json").read_text())
    assert any(psutil.pid_exists(o["pid"]) for o in orphans)  # Ray daemons outlived the driver

    resumed = subprocess.run([*WRAPPERDIST, "sweep", str(path), "--resume"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "left behind by the interrupted driver" in resumed.stdout
    for o in orphans:
        if psutil.pid_exists(o["pid"]):
            assert psutil.Process(o["pid"]).create_time() != o["created"]  # not the same process
    after = {p.parent.name: p.stat().st_mtime_ns for p in store.glob("*/DONE")}
    assert all(after[k] == v for k, v in before.items())  # finished stages were not redone
    assert len([k for k in after if k.startswith("finetune")]) == 4 and len(after) == 1 + 4 + 4

    runs = runs_of(tmp_path)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    sweeps = [r for r in runs if r.data.tags["wrapperdist.stage"] == "sweep"]
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    finished = [r.data.tags["wrapperdist.node_key"] for r in runs if r.info.status == "FINISHED"
                and r.data.tags["wrapperdist.stage"] != "sweep"]
    assert sorted(finished) == sorted(after)  # exactly one FINISHED run per stage
    # two trials ran at once against one SQLite store: every curve arrived whole, nothing locked
    client = mlflow.MlflowClient()
    for run in (r for r in runs if r.data.tags["wrapperdist.stage"] == "finetune" and r.info.status == "FINISHED"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "ft_acc")]
        assert steps == [0, 100, 200, 300, 400], (run.info.run_name, steps)
    assert all(r.data.tags.get("ray.tune.trial_id") for r in runs if r.data.tags["wrapperdist.stage"] == "finetune")


def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # offset 40 can never hold on strings of at most 10 tokens: that fine-tune raises at run time
    path, env = setup_sweep(tmp_path, {"analyze": False, "grid": {"setting.spurious_offset": [1, 40]},
                                       "resources": {"cpus": 2, "max_failures": 1}})
    done = subprocess.run([*WRAPPERDIST, "sweep", str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # 1: finished, with failures
    status = {r.data.params.get("setting.spurious_offset"): r.info.status
              for r in runs_of(tmp_path) if r.data.tags["wrapperdist.stage"] == "finetune"}
    assert status == {"1": "FINISHED", "40": "FAILED"}
    failed = next(r for r in runs_of(tmp_path) if r.info.status == "FAILED")
    assert "could not be planted" in failed.data.tags["wrapperdist.error"]
    trial_dirs = list((tmp_path / "results" / "rt-finetune").glob("*/error.txt"))
    assert trial_dirs  # Tune recorded the error too (after its retry)


def test_optuna_search_with_asha(tmp_path):
    spec = {"analyze": False, "search": {"num_samples": 4, "metric": "ft_acc", "mode": "max", "seed": 0,
                                         "space": {"finetune.optim.lr": {"loguniform": [1e-4, 1e-2]}},
                                         "asha": {"max_t": 6, "grace_period": 2, "reduction_factor": 2}},
            "resources": {"cpus": 2}}
    path, env = setup_sweep(tmp_path, spec)
    done = subprocess.run([*WRAPPERDIST, "sweep", str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = runs_of(tmp_path)
    ft = [r for r in runs if r.data.tags["wrapperdist.stage"] == "finetune"]
    lrs = {float(r.data.params["finetune.optim.lr"]) for r in ft}
    assert len(ft) == 4 and len(lrs) == 4 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    # OptunaSearch kept its study in the sweep's storage, where optuna-dashboard finds it
    url = f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage=url)
    trials = optuna.load_study(study_name=summary.study_name, storage=url).trials
    assert len(trials) == 4 and {t.params["finetune.optim.lr"] for t in trials} == lrs
    assert "[finetune search 1/1] finished: " in done.stderr  # progress, a line per trial off a terminal


def test_asha_stops_a_ray_train_trial_early(tmp_path):
    # Under 2 DDP workers lr 0.01 and 0.03 reach ft_acc 0.594 by step 10 and hold it (a tie: neither
    # is ever stopped), lr 100 is at 0.0 throughout. Seed 9 samples 0.03, 100, 0.01 in that order, so
    # ASHA's first rung (report 2 = step 10) stops lr 100 against 0.03, and 0.01's Train run needs
    # the two CPUs the stopped run held: on 2 CPUs it only fits if that run was torn down.
    spec = {"analyze": False, "search": {"num_samples": 3, "metric": "ft_acc", "mode": "max", "seed": 9,
                                         "space": {"finetune.optim.lr": {"choice": [0.01, 0.03, 100.0]}},
                                         "asha": {"max_t": 6, "grace_period": 2, "reduction_factor": 2}},
            "resources": {"cpus": 2, "train_workers": 2}}
    path, env = setup_sweep(tmp_path, spec)
    done = subprocess.run([*WRAPPERDIST, "sweep", str(path)], env=env, capture_output=True, text=True,
                          timeout=900)  # ~200 s alone; a clean-clone run here needed > 400 s under the suite
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ft = {float(r.data.params["finetune.optim.lr"]): r for r in runs_of(tmp_path)
          if r.data.tags["wrapperdist.stage"] == "finetune"}
    client = mlflow.MlflowClient()
    steps = {lr: [m.step for m in client.get_metric_history(r.info.run_id, "ft_acc")] for lr, r in ft.items()}
    stopped = ft[100.0]
    assert stopped.info.status == "KILLED" and stopped.data.tags.get("wrapperdist.stopped_early") == "true"
    assert steps[100.0] == [0, 10], steps  # stopped at ASHA's first rung, before its last evaluation
    for lr in (0.01, 0.03):
        assert ft[lr].info.status == "FINISHED" and "wrapperdist.stopped_early" not in ft[lr].data.tags
        assert steps[lr] == [0, 10, 20], steps  # every evaluation point, each once
        assert ft[lr].data.tags["wrapperdist.train_nodes"]  # the workers' nodes, reported live
    assert ft[0.01].info.start_time > stopped.info.end_time  # the run after the stop got its workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_sweep_against_mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=(tmp_path / "server.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        path, env = setup_sweep(tmp_path, {"analyze": False, "grid": {"finetune.optim.lr": [1e-3, 3e-4]}})
        env["MLFLOW_TRACKING_URI"] = uri
        done = subprocess.run([*WRAPPERDIST, "sweep", str(path), "--local"], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Started a local Ray instance" not in done.stdout + done.stderr  # --local never starts Ray
        mlflow.set_tracking_uri(uri)
        runs = mlflow.search_runs(experiment_names=["raytest"], output_format="list")
        assert sorted(r.data.tags["wrapperdist.stage"] for r in runs) == ["finetune", "finetune", "pretrain", "sweep"]
        ft = next(r for r in runs if r.data.tags["wrapperdist.stage"] == "finetune")
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(ft.info.run_id, "checkpoint")}
        assert artifacts == {"checkpoint/model.pt"}  # uploaded through the server
        assert (tmp_path / "server-artifacts").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
