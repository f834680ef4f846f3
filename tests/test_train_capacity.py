"""What a Ray Train run holds when it fails, and a stage whose Train run never gets its resources.

On a cluster at its full size, a Train run that died with a node keeps its worker-group placement
group (Ray re-reserves the lost bundles on the replacement node), so the retry would never fit: the
driver removes the group before Tune retries the trial. A stage whose workers cannot be placed at
all fails with one line naming it and what it lacked; the stages that do not need it finish, and
`--resume` runs it once the capacity is back."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pytest
import ray
import yaml
from conftest import TINY
from ray.util.placement_group import placement_group, placement_group_table

from wrapperdist.cli import main
from wrapperdist.sweep.ray_train import CAPACITY_FAILURES, capacity_shortfall
from wrapperdist.sweep.train_runs import WORKER_CLASS, StopTrainRuns, train_runs

pytestmark = pytest.mark.ray


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if ray.is_initialized():
        ray.shutdown()


def _state(pg) -> str:
    return placement_group_table(pg)["state"]


def test_a_failed_train_runs_placement_group_is_released_before_the_retry(local_ray):
    runs = train_runs()
    held = placement_group([{"CPU": 1}, {"CPU": 1}])  # what a 2-worker run reserves: the whole machine
    ray.get(held.ready(), timeout=30)
    key = ray.get(runs.open.remote("trial-1"))
    ray.get(runs.placed.remote(key, held))
    retry = placement_group([{"CPU": 1}, {"CPU": 1}])  # the retry's run, on a cluster with no spare node
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(retry.ready(), timeout=2)  # it cannot start while the failed run holds the nodes
    # Tune calls on_trial_recover before it schedules the retry
    StopTrainRuns(runs).on_trial_recover(0, [], SimpleNamespace(trial_id="trial-1"))
    assert _state(held) == "REMOVED"
    ray.get(retry.ready(), timeout=30)  # the retry fits in the capacity there was before the loss
    # a group posted by a rank that was still starting when its trial failed is removed on arrival
    late_key = ray.get(runs.open.remote("trial-2"))
    StopTrainRuns(runs).on_trial_error(0, [], SimpleNamespace(trial_id="trial-2"))
    late = placement_group([{"CPU": 0.5}])
    ray.get(runs.placed.remote(late_key, late))
    assert _state(late) == "REMOVED"
    assert not ray.get(runs.release_trial.remote("never-ran"))


def test_a_group_no_rank_posted_is_found_among_the_groups_left_behind():
    """A node lost while the run's workers were still starting: no rank posted the group. The driver
    removes the groups whose Train workers are all dead, and no other: not one whose worker is alive,
    not one that holds no worker yet (a sibling run reserving its group). Through Ray's state API, so
    with a dashboard, as on a cluster."""
    import time

    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    from ray.util.state import list_actors

    ray.init(address="local", num_cpus=3, include_dashboard=True, log_to_driver=False)
    try:
        worker_class = ray.remote(num_cpus=1)(type(WORKER_CLASS, (), {"ping": lambda self: 1}))

        def group_with_a_worker():
            group = placement_group([{"CPU": 1}])
            worker = worker_class.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group)).remote()
            ray.get(worker.ping.remote(), timeout=60)
            return group, worker

        (lost, lost_worker), (alive, _alive_worker) = group_with_a_worker(), group_with_a_worker()
        reserving = placement_group([{"CPU": 1}])
        ray.get(reserving.ready(), timeout=30)
        ray.kill(lost_worker)
        deadline = time.time() + 60
        address = ray.get_runtime_context().gcs_address  # other tests' Ray instances may run beside it
        while {a.state for a in list_actors(address=address, filters=[("class_name", "=", WORKER_CLASS)])} \
                != {"DEAD", "ALIVE"}:
            assert time.time() < deadline, "the state API never showed the killed worker dead"
            time.sleep(0.5)
        runs = train_runs()
        ray.get(runs.open.remote("trial-1"))  # its ranks never posted the group
        assert ray.get(runs.release_trial.remote("trial-1"))
        assert (_state(lost), _state(alive), _state(reserving)) == ("REMOVED", "CREATED", "CREATED")
    finally:
        ray.shutdown()
    from ray.train.v2._internal.execution.worker_group.worker import RayTrainWorker

    assert RayTrainWorker.__name__ == WORKER_CLASS  # the name the search filters on


def test_ray_train_still_names_its_capacity_failures():
    """The internal exception names `capacity_shortfall` matches: a Ray upgrade that renames them fails here."""
    from ray.train import ControllerError
    from ray.train.v2._internal import exceptions

    for name in CAPACITY_FAILURES:
        cls = getattr(exceptions, name)
        cause = cls(2) if name == "WorkerGroupStartupTimeoutError" else cls("no such node type")
        assert capacity_shortfall(ControllerError(cause))
    assert not capacity_shortfall(ControllerError(RuntimeError("a bug")))
    assert not capacity_shortfall(RuntimeError("a bug"))


def _spec(tmp_path, name: str, resources: dict, seeds: list[int]):
    experiment = {**TINY, "tracking": {"experiment": "capacity"}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "experiment": "exp.yaml", "storage_path": str(tmp_path / "shared"),
                                    "analyze": False, "revival_budgets": [20], "grid": {"seed": seeds},
                                    "resources": resources}))
    return path


def _runs(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["capacity"], output_format="list")
    return [r for r in runs if r.data.tags["wrapperdist.stage"] != "sweep"]


def test_a_stage_without_capacity_fails_in_one_line_and_resume_completes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # seed 0's stages are in the store already (trained in-process): they need no Train workers
    assert main(["sweep", str(_spec(tmp_path, "seed0", {"cpus": 2}, [0])), "--local"]) == 0
    spec = _spec(tmp_path, "seeds", {"cpus": 2, "train_workers": 2, "max_failures": 0,
                                     "worker_start_timeout_s": 5}, [0, 1])
    # a Ray of 2 CPUs, one of them held by someone else's job and never given back
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    squatter = placement_group([{"CPU": 1}])
    ray.get(squatter.ready(), timeout=30)
    capsys.readouterr()
    assert main(["sweep", str(spec)]) == 1  # finished, with a failure
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert not ray.is_initialized()  # the sweep ended the Ray it ran on (the squatter with it)
    failed_lines = [line for line in out.splitlines() if "no room for its Ray Train run" in line]
    assert len(failed_lines) >= 1, out[-3000:]
    summary = [line for line in failed_lines if line.startswith("  [pretrain]")]
    assert len(summary) == 1, out[-3000:]
    line = summary[0]
    assert "seed=1" in line and "needs 2 × {CPU 0.99}" in line and "after 5 s" in line, line
    assert "resources.worker_start_timeout_s" in line and "--resume" in line, line
    runs = _runs(tmp_path)
    status = sorted((r.data.tags["wrapperdist.stage"], r.data.params["seed"], r.info.status) for r in runs)
    # seed 0's stages finished (reused, in both sweeps' trees); seed 1's pretrain FAILED, and its
    # fine-tune is recorded FAILED without a trial: nothing was launched to find its input missing
    assert status == [("finetune", "0", "FINISHED"), ("finetune", "0", "FINISHED"), ("finetune", "1", "FAILED"),
                      ("pretrain", "0", "FINISHED"), ("pretrain", "0", "FINISHED"), ("pretrain", "1", "FAILED"),
                      ("reft", "0", "FINISHED"), ("reft", "0", "FINISHED"), ("reft", "1", "FAILED")], status
    failed = {r.data.tags["wrapperdist.stage"]: r for r in runs if r.info.status == "FAILED"}
    errors = {stage: r.data.tags["wrapperdist.error"] for stage, r in failed.items()}
    assert "no room for its Ray Train run" in errors["pretrain"]
    # Ray's own message, from its controller: the spec's timeout reached it (Ray's default is 60 s)
    assert "timed out after 5.0 seconds" in errors["pretrain"], errors["pretrain"][-2000:]
    for stage in ("finetune", "reft"):  # downstream of the failure: recorded, no trial launched
        assert errors[stage].startswith("not run: its input "), errors[stage]
        assert "ray.tune.trial_id" not in failed[stage].data.tags

    assert main(["sweep", str(spec), "--resume"]) == 0  # the capacity is back
    runs = {r.data.tags["wrapperdist.stage"]: r for r in _runs(tmp_path)
            if r.info.status == "FINISHED" and r.data.params["seed"] == "1"}
    assert sorted(runs) == ["finetune", "pretrain", "reft"]
    # each through a Ray Train run of 2 DDP workers, its evaluations all logged
    assert all(len(r.data.tags["wrapperdist.train_nodes"].split(",")) == 2 for r in runs.values())
    assert list((tmp_path / "shared").glob("seeds-*-finetune-*")), "training did not go through Ray Train"
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(runs["finetune"].info.run_id, "ft_acc")] == [0, 10, 20]
    assert [m.step for m in client.get_metric_history(runs["reft"].info.run_id, "pt_acc")][-1] == 20
