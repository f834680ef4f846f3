"""Adding a setting is shown, not claimed: the toy copy task of tests/toy_setting.py (one module, no
edit to the package) runs pretrain → fine-tune → analysis through `wrapperdist run` and through a
`--local` sweep, found only through $WRAPPERDIST_PLUGINS, and what it learns is real."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

import wrapperdist.setting
from wrapperdist.cli import main
from wrapperdist.config import ExperimentConfig
from wrapperdist.models import load_model, random_like
from wrapperdist.schema import SECTIONS
from wrapperdist.settings.registry import PLUGINS_ENV, SETTINGS

PLUGIN = "toy_setting"  # tests/toy_setting.py
CHANCE = 1 / 8  # the toy's default vocabulary: 8 content tokens

TOY = {
    "name": "toy",
    "seed": 0,
    "setting": {"name": "toy", "vocab": 8, "length": 4, "pretrain_position": 0, "finetune_position": 1},
    "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
    "pretrain": {"optim": {"lr": 1e-2, "steps": 80, "batch_size": 64, "eval_every": 40, "log_every": 20}},
    "finetune": {"optim": {"lr": 1e-2, "steps": 60, "batch_size": 64, "eval_every": 30, "log_every": 20}},
    "eval": {"samples": 256},
    "analysis": {
        "prune": {"ks": [0, 1, 4], "score_samples": 64, "random_controls": 1, "learned_steps": 10,
                  "learned_batch_size": 32},
        "probe": {"samples": 128, "steps": 20},
        "reft": {"steps": 10, "eval_every": 5},
        "attention_prompts": 2,
    },
    "tracking": {"experiment": "toy"},
}


@contextlib.contextmanager
def toy_plugin(tmp: Path):
    """A private MLflow store, the plug-in named in $WRAPPERDIST_PLUGINS and not yet imported; on
    exit the toy setting is unregistered again (other tests see only the built-in settings).
    One torch thread: for a model this small more threads only wait on each other (3x slower on a
    busy 2-core machine); threads are how a stage runs, not what it computes."""
    assert "toy" not in SECTIONS and "toy" not in SETTINGS, "the toy setting leaked from another test"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.setenv(PLUGINS_ENV, PLUGIN)
        mp.syspath_prepend(str(Path(__file__).parent))  # where the plug-in module lives
        mp.setattr(wrapperdist.setting, "default_threads", lambda: 1)  # `wrapperdist run` has no --threads
        try:
            yield f"sqlite:///{tmp / 'mlflow.db'}"
        finally:
            SECTIONS.pop("toy", None)
            SETTINGS.pop("toy", None)
            sys.modules.pop(PLUGIN, None)


def write_experiment(tmp: Path) -> Path:
    path = tmp / "toy_experiment.yaml"
    path.write_text(yaml.safe_dump({**TOY, "output_dir": str(tmp / "runs")}, sort_keys=False))
    return path


def runs_by_stage(uri: str) -> tuple[dict[str, list], MlflowClient]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("toy")
    assert experiment is not None, "no MLflow experiment 'toy' was created"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    stages: dict[str, list] = {}
    for run in runs:
        stages.setdefault(run.data.tags.get("wrapperdist.stage", "?"), []).append(run)
    return stages, client


def by_role(runs: list) -> dict[str, Any]:
    roles = Counter(r.data.tags.get("wrapperdist.role") or "main" for r in runs)
    assert roles == {"main": 1, "control": 1}, f"expected one main and one control pretrain, got {dict(roles)}"
    return {r.data.tags.get("wrapperdist.role") or "main": r for r in runs}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`wrapperdist run toy.yaml --analyze`, in process, once for the tests below."""
    tmp = tmp_path_factory.mktemp("toy_run")
    config = write_experiment(tmp)
    with toy_plugin(tmp) as uri:
        rc = main(["run", str(config), "--analyze", "--no-progress"])
        assert "toy" in SETTINGS, "the CLI did not load the plug-in named in $WRAPPERDIST_PLUGINS"
        stages, client = runs_by_stage(uri)
        setting = SETTINGS["toy"]
        cfg = ExperimentConfig.model_validate(TOY)
        evaluate = setting.evaluator(cfg)
        pretrain = by_role(stages.get("pretrain", []))["main"]
        checkpoint = Path(client.download_artifacts(pretrain.info.run_id, "checkpoint/model.pt", str(tmp / "dl")))
        model = load_model(checkpoint)[0]
        untrained = {"random init": evaluate(random_like(model, seed=123)), "pretrained": evaluate(model)}
    return {"rc": rc, "stages": stages, "evaluated": untrained}


def test_run_records_pretrain_finetune_and_analysis(cli_run):
    assert cli_run["rc"] == 0
    stages = cli_run["stages"]
    counts = {stage: len(runs) for stage, runs in stages.items()}
    assert counts == {"sweep": 1, "pretrain": 2, "finetune": 1, "analysis": 1}, counts
    unfinished = [(r.info.run_name, r.info.status) for runs in stages.values() for r in runs
                  if r.info.status != "FINISHED"]
    assert not unfinished, unfinished

    pretrains = by_role(stages["pretrain"])
    assert pretrains["main"].data.params["setting.name"] == "toy"
    # the control is the toy's own control_config: pretrained on O_FT's position instead
    assert pretrains["control"].data.params["setting.pretrain_position"] == "1"
    finetune, analysis = stages["finetune"][0], stages["analysis"][0]
    assert {"pt_acc", "ft_acc"} <= finetune.data.metrics.keys()
    evidence = {k for k in analysis.data.metrics if k.startswith("evidence.")}
    assert {"evidence.pt_acc_finetuned", "evidence.probe_finetuned", "evidence.prune_best_gain",
            "evidence.prune_heldout_gain", "evidence.prune_selected_k"} <= evidence
    # the analysis evaluated the fine-tuned checkpoint on the setting's held-out sets
    assert analysis.data.metrics["evidence.pt_acc_finetuned"] == pytest.approx(finetune.data.metrics["pt_acc"])
    assert analysis.data.tags["mlflow.parentRunId"] == finetune.info.run_id


def test_the_toy_setting_learns_what_it_says(cli_run):
    """Pretraining learns O_PT (copy position 0) and only O_PT; fine-tuning learns O_FT. A broken
    pipe (wrong data stream, wrong labels, no optimiser step, an eval on the wrong set) fails here."""
    pretrain = by_role(cli_run["stages"]["pretrain"])["main"].data.metrics
    finetune = cli_run["stages"]["finetune"][0].data.metrics
    assert pretrain["pt_acc"] > 0.9 > 3 * CHANCE, pretrain
    assert pretrain["ft_acc"] < 3 * CHANCE, pretrain  # O_FT was never trained: near chance
    assert finetune["ft_acc"] > 0.8, finetune
    evaluated = cli_run["evaluated"]
    assert evaluated["random init"]["pt_acc"] < 3 * CHANCE, evaluated  # the bar above is not free
    # the checkpoint the run logged is the model whose accuracy it logged
    assert evaluated["pretrained"]["pt_acc"] == pytest.approx(pretrain["pt_acc"])


def test_local_sweep_shares_the_pretrain(tmp_path, capsys):
    write_experiment(tmp_path)
    spec = tmp_path / "toy_sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "toy-sweep",
        "experiment": "toy_experiment.yaml",
        "grid": {"finetune.optim.lr": [1e-2, 3e-3]},
        "revival_budgets": [5],
        "analyze": True,
        "storage_path": str(tmp_path / "ray_results"),
        "resources": {"cpus": 1, "max_failures": 0},  # one trial at a time, one torch thread
    }, sort_keys=False))
    with toy_plugin(tmp_path) as uri:
        rc = main(["sweep", str(spec), "--local"])
        stages, _ = runs_by_stage(uri)
    errors = [r.data.tags.get("wrapperdist.error", "")[-2000:] for runs in stages.values() for r in runs
              if r.info.status == "FAILED"]
    assert rc == 0, errors or capsys.readouterr().err[-3000:]

    counts = {stage: len(runs) for stage, runs in stages.items()}
    # 2 learning rates share 1 pretrain (+ 1 control pretrain); each fine-tune has an analysis and a reFT
    assert counts == {"sweep": 1, "pretrain": 2, "finetune": 2, "analysis": 2, "reft": 2}, counts
    unfinished = [(r.info.run_name, r.info.status) for runs in stages.values() for r in runs
                  if r.info.status != "FINISHED"]
    assert not unfinished, unfinished
    keys = [r.data.tags["wrapperdist.node_key"] for stage, runs in stages.items() if stage != "sweep" for r in runs]
    assert len(set(keys)) == len(keys) == 8, keys  # one run per stage node

    pretrain = by_role(stages["pretrain"])["main"]
    assert pretrain.data.metrics["pt_acc"] > 0.9
    assert {r.data.tags["mlflow.parentRunId"] for r in stages["finetune"]} == {pretrain.info.run_id}
    assert {r.data.params["finetune.optim.lr"] for r in stages["finetune"]} == {"0.01", "0.003"}
    for run in stages["finetune"]:
        assert {"pt_acc", "ft_acc"} <= run.data.metrics.keys()
    for run in stages["analysis"]:
        assert "evidence.pt_acc_finetuned" in run.data.metrics
    for run in stages["reft"]:
        assert run.data.params["reft.budget"] == "5" and "pt_acc" in run.data.metrics
    finetune_ids = sorted(r.info.run_id for r in stages["finetune"])
    for stage in ("analysis", "reft"):  # one of each under each fine-tune
        assert sorted(r.data.tags["mlflow.parentRunId"] for r in stages[stage]) == finetune_ids, stage


@pytest.mark.ray
def test_a_plugin_setting_runs_inside_ray_workers(tmp_path):
    """The plug-in is named only to the CLI ($WRAPPERDIST_PLUGINS); the Ray trials that pretrain and
    fine-tune it import it when they unpickle their node's config (its section class lives in the
    plug-in module), which registers the setting there too. Real Ray, in a subprocess."""
    write_experiment(tmp_path)
    spec = tmp_path / "toy_sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "toy-ray", "experiment": "toy_experiment.yaml", "analyze": False,
        "storage_path": str(tmp_path / "ray_results"), "resources": {"cpus": 1, "max_failures": 0}}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, PLUGINS_ENV: PLUGIN, "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "wrapperdist.cli", "sweep", str(spec)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stages, _ = runs_by_stage(uri)
    for stage in ("pretrain", "finetune"):
        (run,) = stages[stage]
        assert run.info.status == "FINISHED" and run.data.params["setting.name"] == "toy"
        assert run.data.tags.get("wrapperdist.ray_node_id"), "not run in a Ray trial"  # a Ray worker's report
    assert {"pt_acc", "ft_acc"} <= stages["finetune"][0].data.metrics.keys()
    assert "toy" not in SETTINGS  # this process never imported the plug-in: only the subprocess's workers did
