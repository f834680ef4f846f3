"""Sweep specs, the stage DAG with reuse, and the in-process executor's MLflow tree."""

from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import TINY

from wrapperdist.cli import main
from wrapperdist.config import ConfigError
from wrapperdist.sweep.plan import make_plan
from wrapperdist.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]


def write_sweep(tmp_path, spec: dict, experiment: dict | None = None) -> Path:
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment or {k: v for k, v in TINY.items()}))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "experiment": "exp.yaml",
                                    "storage_path": str(tmp_path / "results"), **spec}))
    return path


@pytest.mark.parametrize("spec,expected", [
    ({"grid": {"finetune.optim.lr": [1e-3, -1.0]}},
     "grid.finetune.optim.lr=-1.0: finetune.optim.lr: Input should be greater than 0"),
    ({"grid": {"finetune.optim.lrate": [1e-3]}}, "finetune.optim.lrate: Extra inputs are not permitted"),
    ({"grid": {"setting.prior": ["medium", "extreme"]}}, "grid.setting.prior='extreme'"),
    ({"grid": {"seed": []}}, "grid axes without values"),
    ({"search": {"space": {"pretrain.optim.lr": {"loguniform": [1e-4, 1e-2]}}}}, "may not change pretraining"),
    ({"search": {"space": {"setting.prior": {"choice": ["low", "high"]}}}},
     "search.space.setting.prior: changes the pretrained model; put it in grid"),
    ({"search": {"space": {"finetune.optim.lr": {"loguniform": [1e-2, 1e-4]}}}}, "low (0.01) must be below high"),
    ({"search": {"space": {"finetune.optim.lr": {}}}}, "give exactly one of"),
    ({"revival_budgets": [0]}, "revival_budgets.0: Input should be greater than 0"),
    ({"resources": {"train_workers": -1}}, "resources.train_workers"),
    ({"unknown": 1}, "unknown: Extra inputs are not permitted"),
    ({"experiment": "missing.yaml"}, "experiment: file not found"),
    ({"overrides": {"model.n_head": 3}}, "model: d_model (16) must be divisible by n_head (3)"),
])
def test_invalid_sweep_names_the_field(tmp_path, spec, expected):
    with pytest.raises(ConfigError) as err:
        load_sweep(write_sweep(tmp_path, spec))
    assert expected in str(err.value)
    assert str(tmp_path / "sweep.yaml") in str(err.value)


def test_grid_of_3_priors_by_3_lrs_runs_3_pretrains(tmp_path):
    spec = {"grid": {"setting.prior": ["low", "medium", "high"], "finetune.optim.lr": [1e-3, 1e-4, 1e-5]},
            "revival_budgets": [10, 20]}
    plan = make_plan(load_sweep(write_sweep(tmp_path, {**spec, "analyze": False})))
    assert plan.counts() == {"pretrain": 3, "finetune": 9, "downstream": 18}
    with_controls = make_plan(load_sweep(write_sweep(tmp_path, spec)))
    roles = sorted(n.role for n in with_controls.pretrain)
    assert roles == ["control"] + ["main"] * 3  # plus one Scr.+FT control, shared by the priors (paper Sec. 5.1)
    assert {n.parent for n in plan.finetune} == {n.key for n in plan.pretrain}


def test_dry_run_lists_trials_and_resources(tmp_path, capsys):
    path = write_sweep(tmp_path, {"grid": {"finetune.optim.lr": [1e-3, 1e-4]}, "resources": {"cpus": 2}})
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 concurrent trial(s) × 1 torch thread(s) on 2 CPUs" in out
    assert out.count("ft lr=") == 2 and "pretrain (2)" in out  # 1 main + 1 control
    assert not (tmp_path / "results").exists()  # nothing ran


def test_a_phase_fills_the_cores():
    """Fewer nodes than slots: more threads each; a little more than the slots (3 analyses on 2
    cores): all at once on a share of the cores, not a last round with a core idle; many: rounds."""
    from wrapperdist.sweep.executors import Layout

    two = Layout(cpus=2, threads_per_trial=1, max_concurrent=2, train_workers=0)
    one = two.for_phase(1)
    assert (one.max_concurrent, one.threads_per_trial, one.cpu_request) == (1, 2, 2)
    three = two.for_phase(3)
    assert (three.max_concurrent, three.threads_per_trial) == (3, 1)
    assert 3 * three.cpu_request <= 2 and three.cpu_request > 0.66  # all three fit Ray's 2 CPUs
    assert two.for_phase(4) == two and two.for_phase(7) == two
    multi = Layout(cpus=4, threads_per_trial=2, max_concurrent=2, train_workers=0)
    assert multi.for_phase(3) == multi  # multi-thread trials keep their rounds


def test_device_resolution_and_gpu_packing(tmp_path, monkeypatch):
    """resources.device: cpu runs as before; cuda packs in-process training trials onto the GPUs
    (gpus_per_trial each), analyses stay on the CPU; cuda without a GPU is refused naming the field."""
    import wrapperdist.sweep.executors as executors
    from wrapperdist.config import ConfigError
    from wrapperdist.sweep.executors import DeviceUnavailable, layout_for

    def sweep(**resources):
        return load_sweep(write_sweep(tmp_path, {"resources": {"cpus": 16, **resources}}))

    assert layout_for(sweep()).device == "cpu" and layout_for(sweep(), gpus=1).device == "cpu"
    even = layout_for(sweep(device="cuda"), gpus=1)  # 16 single-thread trials share the one GPU
    assert (even.device, even.max_concurrent, even.gpus_per_trial) == ("cuda", 16, 0.062)
    assert even.request("finetune") == {"cpu": 1, "gpu": 0.062} and even.request("analysis") == {"cpu": 1}
    assert even.runtime("finetune").device == "cuda" and even.runtime("analysis").device == "cpu"
    eighth = layout_for(sweep(device="cuda", gpus_per_trial=0.125), gpus=1)
    assert (eighth.max_concurrent, eighth.gpus_per_trial) == (8, 0.125)
    assert layout_for(sweep(device="auto"), gpus=0).device == "cpu"
    assert layout_for(sweep(device="auto"), gpus=2).device == "cuda"
    train = layout_for(sweep(device="cuda", train_workers=2), gpus=4)
    assert (train.max_concurrent, train.use_gpu, train.request("pretrain")) == (2, True, {"cpu": 0.01})
    assert train.runtime("pretrain").device == "cpu"  # Ray Train places the model on its workers' GPUs
    with pytest.raises(DeviceUnavailable, match=r"^resources\.device: cuda, but there is no CUDA device") as err:
        layout_for(sweep(device="cuda"), gpus=0)
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)
    monkeypatch.setattr(executors, "local_gpus", lambda: 0)  # the default: this machine's GPUs
    with pytest.raises(DeviceUnavailable):
        layout_for(sweep(device="cuda"))
    with pytest.raises(ConfigError, match="resources: .*use_gpu was replaced by device"):
        sweep(use_gpu=True)


def test_cuda_sweep_without_a_gpu_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    import wrapperdist.sweep.executors as executors

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(executors, "local_gpus", lambda: 0)
    path = write_sweep(tmp_path, {"resources": {"device": "cuda"}})
    for flags in ([], ["--local"], ["--dry-run"]):
        assert main(["sweep", str(path), *flags]) == 2
        assert "resources.device: cuda" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()  # nothing was started


def test_local_sweep_with_asha_is_refused(tmp_path, monkeypatch, capsys):
    """ASHA needs Ray Tune: --local does not drop it silently, it refuses in one line."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = write_sweep(tmp_path, {"search": {"num_samples": 2, "space": {"finetune.optim.lr": {"choice": [1e-3]}},
                                             "asha": {"max_t": 4, "grace_period": 1}}})
    assert main(["sweep", str(path), "--local"]) == 2
    err = capsys.readouterr().err
    assert "search.asha: ASHA early stopping needs Ray Tune" in err and "--local" in err
    assert not (tmp_path / "mlflow.db").exists()


def _tree(experiment="test"):
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    return runs, {r.info.run_id: r for r in runs}


def test_local_sweep_tree_reuse_and_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = {**TINY, "tracking": {"experiment": "test"}}
    # the second grid point cannot be sampled (the planted relation never holds): it fails at run time
    path = write_sweep(tmp_path, {"grid": {"setting.spurious_offset": [1, 40]}, "revival_budgets": [10],
                                  "resources": {"max_failures": 0}}, experiment)
    assert main(["sweep", str(path), "--local"]) == 1  # exit 1: some nodes failed
    runs, by_id = _tree()
    status = {(r.data.tags["wrapperdist.stage"], r.data.params.get("setting.spurious_offset")): r.info.status
              for r in runs if r.data.tags["wrapperdist.stage"] != "sweep"}
    assert status[("finetune", "1")] == "FINISHED" and status[("finetune", "40")] == "FAILED"
    assert status[("analysis", "1")] == "FINISHED" and status[("analysis", "40")] == "FAILED"
    assert status[("reft", "1")] == "FINISHED" and status[("reft", "40")] == "FAILED"
    failed_ft = next(r for r in runs if r.data.tags["wrapperdist.stage"] == "finetune" and r.info.status == "FAILED")
    assert "could not be planted" in failed_ft.data.tags["wrapperdist.error"]
    sweep = next(r for r in runs if r.data.tags["wrapperdist.stage"] == "sweep")
    for r in runs:  # the tree: sweep → pretrain → finetune → analysis/reft; controls under the sweep
        parent = by_id.get(r.data.tags.get("mlflow.parentRunId"))
        stage = r.data.tags["wrapperdist.stage"]
        expected = {"sweep": None, "pretrain": "sweep", "finetune": "pretrain", "analysis": "finetune",
                    "reft": "finetune"}[stage]
        assert (parent.data.tags["wrapperdist.stage"] if parent else None) == expected, r.info.run_name
        assert r.info.status != "RUNNING"
    ok_ft = next(r for r in runs if r.data.tags["wrapperdist.stage"] == "finetune" and r.info.status == "FINISHED")
    client = mlflow.MlflowClient()
    for metric in ("ft_acc", "ft_acc_spurious", "pt_acc"):  # live points are not replayed a second time
        assert [m.step for m in client.get_metric_history(ok_ft.info.run_id, metric)] == [0, 10, 20]
    assert [m.step for m in client.get_metric_history(ok_ft.info.run_id, "train_loss")] == [5, 10, 15, 20]
    assert {a.path for a in client.list_artifacts(ok_ft.info.run_id, "checkpoint")} == {"checkpoint/model.pt"}
    analysis = next(r for r in runs if r.data.tags["wrapperdist.stage"] == "analysis" and r.info.status == "FINISHED")
    plots = {a.path for a in client.list_artifacts(analysis.info.run_id, "plots")}
    assert {"plots/pruning.png", "plots/probes.png"} <= plots
    assert len(client.get_metric_history(analysis.info.run_id, "prune.paper.pt_acc")) == 3
    assert sweep.data.metrics["nodes_failed"] == 3
    # the run page tells what ran: the summary table naming the failed trials, and the resolved spec
    note = sweep.data.tags["mlflow.note.content"]
    assert "failed trials (3):\n  [finetune] ft lr=0.001 C_Tr=0.5 prior=medium seed=0: ValueError: counter(b) = " \
        "counter(a) + 40 could not be planted" in note
    assert {a.path for a in client.list_artifacts(sweep.info.run_id, "spec")} == {"spec/sweep.yaml",
                                                                                 "spec/experiment.yaml"}
    # each stage's generated data is a dataset input: same data config, same digest
    data = {(r.data.tags["wrapperdist.stage"], r.data.params.get("setting.spurious_offset")):
            r.inputs.dataset_inputs[0].dataset for r in runs if r.data.tags["wrapperdist.stage"] != "sweep"}
    assert data[("pretrain", "1")].name == "pcfg pretrain data" and data[("pretrain", "1")].source_type == "code"
    assert data[("finetune", "1")].digest != data[("finetune", "40")].digest  # different data config
    # `wrapperdist analyze` finds a sweep fine-tune's pretrained model through its parent run
    assert main(["analyze", ok_ft.info.run_id]) == 0
    again = [r for r in _tree()[0] if r.data.tags.get("mlflow.parentRunId") == ok_ft.info.run_id
             and r.data.tags["wrapperdist.stage"] == "analysis"]
    assert len(again) == 2 and all(r.info.status == "FINISHED" for r in again)

    # A second sweep with the same stages reuses every finished one from the store.
    store = tmp_path / "results" / "store"
    stamps = {p: p.stat().st_mtime_ns for p in store.glob("*/DONE")}
    assert main(["sweep", str(path), "--local"]) == 1
    assert {p: p.stat().st_mtime_ns for p in store.glob("*/DONE")} == stamps  # nothing retrained
    runs2, _ = _tree()
    second = [r for r in runs2 if r.data.tags.get("wrapperdist.sweep") not in (None, sweep.info.run_id)
              and r.data.tags["wrapperdist.stage"] != "sweep" and r.info.status == "FINISHED"]
    assert second and all(r.data.tags.get("wrapperdist.reused") == "true" for r in second)
    reused_ft = next(r for r in second if r.data.tags["wrapperdist.stage"] == "finetune")
    assert [m.step for m in client.get_metric_history(reused_ft.info.run_id, "ft_acc")] == [0, 10, 20]


def test_shipped_smoke_sweep_validates():
    sweep = load_sweep(ROOT / "sweeps" / "smoke.yaml")
    assert sweep.spec.resources.train_workers == 2 and len(sweep.points) == 4
    assert [p.setting.prior for p in sweep.points] == ["medium", "medium", "high", "high"]


def test_a_searched_trials_error_report_is_a_failed_optuna_trial():
    """OptunaSearch reads its metric from every report: a crashed searched trial's last report carries
    it as NaN, which the study records as FAIL (a report without it raised KeyError in Tune's loop)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from wrapperdist.config import ExperimentConfig
    from wrapperdist.sweep.plan import METRIC_PREFIX, finetune_node
    from wrapperdist.sweep.ray_executor import error_report

    metric = f"{METRIC_PREFIX}ft_acc"
    searcher = OptunaSearch(space={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
                            metric=metric, mode="max", sampler=optuna.samplers.TPESampler(seed=0))
    node = finetune_node(ExperimentConfig.model_validate(TINY))
    for trial_id, crash in (("ok", False), ("crashed", True)):
        assert searcher.suggest(trial_id) is not None
        searcher.on_trial_result(trial_id, {metric: 0.5, "training_iteration": 1})
        if crash:
            report = {**error_report(node, "Traceback ...\nRuntimeError: boom", metric), "training_iteration": 2}
            searcher.on_trial_result(trial_id, report)  # raised KeyError before the metric was carried
            searcher.on_trial_complete(trial_id, error=True)  # as Tune's controller calls it on an error
        else:
            searcher.on_trial_complete(trial_id, {metric: 0.7, "training_iteration": 2})
    states = [t.state for t in searcher._ot_study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert "metric" not in error_report(node, "x", None) and metric not in error_report(node, "x", None)
