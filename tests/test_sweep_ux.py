"""What a person running a sweep sees and steers: live progress and its ETA, --set on a sweep, the
grid-size limit, an Optuna study that survives kill -9 and --resume, its own Ray instance, and a
Makefile that checks the Python version before creating .venv."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from conftest import TINY

from wrapperdist.config import ConfigError, ExperimentConfig
from wrapperdist.sweep.cluster import RAY_JOB_ENV, RayTarget, resolve_address
from wrapperdist.sweep.progress import SweepProgress
from wrapperdist.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
WRAPPERDIST = [sys.executable, "-m", "wrapperdist.cli"]


def write_sweep(tmp_path, spec: dict, experiment: dict | None = None) -> Path:
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment or TINY))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "ux", "experiment": "exp.yaml",
                                    "storage_path": str(tmp_path / "results"), **spec}))
    return path


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_counts_eta_and_failed_trials():
    out, clock = io.StringIO(), FakeClock()
    progress = SweepProgress(out, tty=False, clock=clock)
    progress.phase("finetune", 4)
    progress("done", "ft-0", {"node_name": "cached one", "cached": 1})  # reused: no work, no rate
    exp = '{"finetune": {"optim": {"steps": 100}}}'
    for key in ("ft-1", "ft-2"):
        progress("progress", key, {"node_kind": "finetune", "node_experiment": exp, "step": 0})
    clock.now += 30
    progress("progress", "ft-1", {"step": 50})
    progress("progress", "ft-2", {"step": 50})
    # 3 trials to run, 1.0 trial of work done in 30 s -> 2.0 trials left take 60 s
    assert progress.phases[-1].eta(clock.now) == pytest.approx(60.0)
    clock.now += 30
    progress("done", "ft-1", {"node_name": "ft lr=1", "cached": 0})
    progress("fail", "ft-2", {"node_name": "ft lr=2", "error": "Traceback ...\nValueError: lr too large"})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[finetune] 4 trial(s) | 0/4")
    assert "[finetune] finished: ft lr=1 | 2/4 | done 1, running 1, failed 0, cached 1 | elapsed 1:00, ETA 1:00" \
        in out.getvalue()  # 1.5 trials of work in 60 s, 1.5 left
    # the live line says why, as the summary does
    assert "[finetune] FAILED: ft lr=2: ValueError: lr too large | 3/4 | done 1, running 0, failed 1, cached 1" \
        in out.getvalue()
    summary = progress.close()
    assert summary.splitlines()[1].split() == ["finetune", "4", "1", "1", "1", "1:00"]
    assert "[finetune] ft lr=2: ValueError: lr too large" in summary


def test_log_file_gets_a_heartbeat_at_most_once_a_minute():
    out, clock = io.StringIO(), FakeClock()
    progress = SweepProgress(out, tty=False, clock=clock)
    progress.phase("pretrain", 2)
    exp = '{"pretrain": {"optim": {"steps": 100}}}'
    progress("start", "pt-0", {"node_kind": "pretrain", "node_experiment": exp, "step": 0})
    assert len(out.getvalue().splitlines()) == 1  # the phase line was just written
    for step in (10, 20, 30):  # reports 20 s apart: one heartbeat once 60 s have passed
        clock.now += 20
        progress("progress", "pt-0", {"step": step})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("[pretrain] running | 0/2 | done 0, running 1")
    assert "ETA 5:40" in lines[1]  # 0.3 of a trial in 60 s, 1.7 trials left
    progress.close()


def test_log_file_heartbeat_needs_no_trial_report():
    """An analysis reports nothing until it ends: the log still gets its line a minute."""
    out, clock = io.StringIO(), FakeClock()
    progress = SweepProgress(out, tty=False, clock=clock, refresh_s=3600)  # the test ticks, not the thread
    progress.phase("analysis", 3)
    progress("start", "an-0", {"node_name": "an"})
    progress.tick()
    assert len(out.getvalue().splitlines()) == 1  # no minute yet
    clock.now += 61
    progress.tick()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("[analysis] running | 0/3 | done 0, running 1")
    progress.close()


def test_progress_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    progress = SweepProgress(out, refresh_s=3600)
    progress.phase("pretrain", 2)
    progress("start", "pt-0", {"node_name": "pt"})
    progress.tick()  # what the ticker does between reports
    progress.close()
    text = out.getvalue()
    assert "pretrain:" in text and "running 1" in text and "\r" in text and "ETA" in text


def test_huge_grid_is_refused_at_once(tmp_path, monkeypatch):
    axes = {"seed": list(range(100)), "finetune.optim.lr": [1e-3 + i * 1e-6 for i in range(100)],
            "finetune.optim.steps": list(range(1, 101))}
    path = write_sweep(tmp_path, {"grid": axes})
    validated = []
    original = ExperimentConfig.model_validate
    monkeypatch.setattr(ExperimentConfig, "model_validate",
                        classmethod(lambda cls, *a, **k: validated.append(1) or original(*a, **k)))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert len(validated) <= 1  # the base experiment at most: refused before any grid point is built
    assert str(err.value) == (f"{path}: grid: 1,000,000 points (100 finetune.optim.lr x 100 finetune.optim.steps "
                              "x 100 seed) exceed max_grid_points (10,000); raise it in the file or with "
                              "--set max_grid_points=N")
    assert len(load_sweep(path, ["max_grid_points=2000000", "grid.seed=[0]", "grid.finetune.optim.steps=[5]"])
               .points) == 100


HEAVY = ("torch", "numpy", "ray", "mlflow", "optuna", "pandas", "scipy", "matplotlib")
VALIDATE_ONLY = """
import json, sys
from wrapperdist.cli import main
from wrapperdist.sweep.spec import load_sweep
rc = main(["sweep", sys.argv[1]])
load_sweep(sys.argv[2])
rc_validate = main(["validate", sys.argv[3]])
print(json.dumps({"rc": [rc, rc_validate], "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_refusing_and_validating_import_no_torch_ray_or_mlflow(tmp_path):
    """The huge-grid refusal answers in well under a second end to end because the config path
    (CLI parsing, load_sweep, ExperimentConfig, the settings' config sections, the grid-size check)
    imports none of torch, Ray or MLflow: each takes seconds (the CLI took 5-10 s before)."""
    valid = write_sweep(tmp_path, {"grid": {"seed": [0, 1]}})
    (tmp_path / "huge").mkdir()
    huge = write_sweep(tmp_path / "huge", {"grid": {"seed": list(range(1000)),
                                                    "finetune.optim.lr": [1e-3 + i * 1e-6 for i in range(1000)]}})
    env = {k: v for k, v in os.environ.items() if k != "WRAPPERDIST_PLUGINS"}
    done = subprocess.run([sys.executable, "-c", VALIDATE_ONLY, str(huge), str(valid), str(tmp_path / "exp.yaml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "grid: 1,000,000 points" in done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["rc"] == [2, 0]
    assert "pydantic" in result["loaded"]  # the check sees what was imported
    assert not set(HEAVY) & set(result["loaded"]), sorted(set(HEAVY) & set(result["loaded"]))


def test_ray_address_is_explicit():
    """--address attaches; so does a Ray job (Ray sets RAY_ADDRESS for its entry point); a RAY_ADDRESS
    left in the shell from an earlier cluster session does not: a local instance, and a note first."""
    assert resolve_address(None, {}) == RayTarget(None, "")
    assert resolve_address(None, {"RAY_ADDRESS": ""}) == RayTarget(None, "")
    flag = resolve_address("10.0.0.1:6379", {"RAY_ADDRESS": "10.0.0.9:6379"})
    assert flag == RayTarget("10.0.0.1:6379", "attaching to the Ray cluster at 10.0.0.1:6379 (--address)")
    job = resolve_address(None, {"RAY_ADDRESS": "10.0.0.2:6379", "RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"})
    assert job.address == "10.0.0.2:6379" and "Ray job" in job.note
    stale = resolve_address(None, {"RAY_ADDRESS": "10.0.0.3:6379"})
    assert stale == RayTarget(None, "ignoring RAY_ADDRESS=10.0.0.3:6379 (set in the environment): starting a "
                                    "local Ray instance; to attach to that cluster, pass --address 10.0.0.3:6379")


def test_set_on_a_sweep_reaches_spec_and_experiment(tmp_path):
    path = write_sweep(tmp_path, {"grid": {"seed": [0, 1]}})
    sweep = load_sweep(path, ["finetune.optim.lr=1e-4", "grid.seed=[3]", "resources.cpus=1", "revival_budgets=[7]"])
    assert [p.seed for p in sweep.points] == [3] and sweep.points[0].finetune.optim.lr == 1e-4
    assert sweep.spec.resources.cpus == 1 and sweep.spec.revival_budgets == [7]
    assert sweep.spec.overrides == {"finetune.optim.lr": 1e-4}  # recorded with the spec (MLflow params)
    with pytest.raises(ConfigError, match=r"sweep.yaml: resources.cpus: Input should be greater than 0"):
        load_sweep(path, ["resources.cpus=0"])


def test_local_sweep_starts_its_own_ray(tmp_path, monkeypatch):
    """A left-over `ray start --head` (or its ray_current_cluster file) is never attached to by
    accident: without an address, ray.init gets address='local' (a new instance)."""
    import ray
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    from wrapperdist.sweep import driver
    from wrapperdist.sweep.executors import Layout

    calls, pinned = [], []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(driver, "pin_autoscaling_coordinator", lambda: pinned.append(calls[-1]["address"]))
    driver._start_ray(Layout(2, 1, 2, 0), tmp_path / "pids.json", None)
    assert calls[-1]["address"] == "local" and calls[-1]["num_cpus"] == 2
    driver._start_ray(Layout(2, 1, 2, 0), tmp_path / "pids.json", "10.0.0.1:6379")
    assert calls[-1] == {"address": "10.0.0.1:6379", "log_to_driver": False}
    assert pinned == ["10.0.0.1:6379"]  # Train's coordinator is pinned to the driver's node on a cluster only
    assert RAY_JOB_ENV == RAY_JOB_CONFIG_JSON_ENV_VAR  # how resolve_address tells a Ray job


def test_searched_sweep_resumes_its_optuna_study(tmp_path):
    """kill -9 mid-search, then --resume: the study (SQLite beside the store) continues — trial
    numbers go on, the finished trial is not sampled again, the killed one is marked FAIL."""
    slow = {**TINY, "tracking": {"experiment": "ux"},
            "finetune": {"optim": {**TINY["finetune"]["optim"], "steps": 200, "eval_every": 50}}}
    spec = {"analyze": False, "resources": {"cpus": 1}, "search": {"num_samples": 3, "seed": 0,
                                         "space": {"finetune.optim.lr": {"loguniform": [1e-4, 1e-2]}}}}
    path = write_sweep(tmp_path, spec, slow)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    store = tmp_path / "results" / "store"
    log = tmp_path / "first.log"
    log.touch()
    driver = subprocess.Popen([*WRAPPERDIST, "sweep", str(path), "--local"], env=env, stdout=log.open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    url = f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"

    def second_trial_running() -> bool:
        try:
            trials = optuna.load_study(study_name=None, storage=url).trials
        except Exception:  # noqa: BLE001 - no study yet
            return False
        return len(trials) == 2 and trials[1].state.name == "RUNNING"

    # a line per finished trial (stdout is not a terminal); kill -9 while the second trial runs
    while "[finetune search 1/1] finished: " not in log.read_text() or not second_trial_running():
        assert driver.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert len(list(store.glob("finetune-*/DONE"))) == 1

    resumed = subprocess.run([*WRAPPERDIST, "sweep", str(path), "--local", "--resume"], env=env,
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"optuna-dashboard {url}" in resumed.stdout
    assert "finetune search 1/1" in resumed.stdout and "failed trials" not in resumed.stdout  # summary table
    # what optuna-dashboard does: list the storage's studies and load one
    summaries = optuna.get_all_study_summaries(storage=url)
    assert len(summaries) == 1 and summaries[0].study_name.startswith("ux.")
    study = optuna.load_study(study_name=summaries[0].study_name, storage=url)
    states = {t.number: t.state.name for t in study.trials}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3 and states[0] == "COMPLETE", states
    assert "FAIL" in states.values() and max(states) >= 3, states  # the killed trial; numbers went on
    lrs = [t.params["finetune.optim.lr"] for t in complete]
    assert len(set(lrs)) == 3  # the finished trial was not sampled again
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["ux"], output_format="list")
    ft = [r for r in runs if r.data.tags["wrapperdist.stage"] == "finetune" and r.info.status == "FINISHED"]
    assert sorted(float(r.data.params["finetune.optim.lr"]) for r in ft) == sorted(lrs)
    sweep = next(r for r in runs if r.data.tags["wrapperdist.stage"] == "sweep")
    assert sweep.info.status == "FINISHED" and sweep.data.tags["wrapperdist.optuna_storage"] == url


def test_makefile_refuses_old_python_before_creating_the_venv(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\nif [ "$1" = "-V" ]; then echo "Python 3.10.12"; fi\nexit 1\n')
    fake.chmod(0o755)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    done = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "-C", str(tmp_path), "install", f"PYTHON={fake}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "wrapperdist needs Python >= 3.11" in done.stderr and "Python 3.10.12" in done.stderr, done.stderr
    assert not (tmp_path / ".venv").exists()
