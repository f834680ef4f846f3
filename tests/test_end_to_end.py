"""A tiny real pretrain → fine-tune through the CLI (one-point sweeps), checked in MLflow with search_runs."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from wrapperdist.cli import main
from wrapperdist.tracking import STAGE_TAG


def _runs(experiment="test"):
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.split("\n\nMLflow store")[0])


def test_run_is_a_one_point_sweep(tiny_config, capsys):
    """`run` records the sweep's tree (sweep -> pretrain -> fine-tune) through the sweep's recorder."""
    assert main(["run", str(tiny_config), "--no-progress"]) == 0
    summary = _summary(capsys)
    runs = _runs()
    sweeps = [r for r in runs if r.data.tags.get(STAGE_TAG) == "sweep"]
    assert len(sweeps) == 1 and sweeps[0].info.run_id == summary["sweep_run_id"]
    by_stage = {r.data.tags[STAGE_TAG]: r for r in runs}
    assert set(by_stage) == {"sweep", "pretrain", "finetune"}
    pretrain, finetune = by_stage["pretrain"], by_stage["finetune"]
    assert pretrain.data.tags["mlflow.parentRunId"] == summary["sweep_run_id"]
    assert finetune.data.tags["mlflow.parentRunId"] == pretrain.info.run_id
    for run in (pretrain, finetune):
        assert run.info.status == "FINISHED"
        # the machine a number came from travels with it (CPU results differ across CPU types)
        assert run.data.tags["wrapperdist.device"] == "cpu" and run.data.tags["wrapperdist.cpu"]
        assert run.data.tags["wrapperdist.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert run.data.params["finetune.optim.lr"] == "0.001"
        assert run.data.params["model.d_model"] == "16"
    assert sweeps[0].info.status == "FINISHED"
    client = mlflow.MlflowClient()
    for stage, run, steps in (("pretrain", pretrain, [0, 10, 20, 30]), ("finetune", finetune, [0, 10, 20])):
        history = client.get_metric_history(run.info.run_id, "pt_acc")
        assert [m.step for m in history] == steps, stage  # every evaluation, the final one included
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert artifacts == {"checkpoint/model.pt"}, stage
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/curves.png"}
        assert summary[stage]["run_id"] == run.info.run_id
    assert {"spec/sweep.yaml", "spec/experiment.yaml"} <= {
        a.path for a in client.list_artifacts(sweeps[0].info.run_id, "spec")}
    # The fine-tune starts where pretraining ended: same weights, same step-0 evaluation.
    pt_end = client.get_metric_history(pretrain.info.run_id, "pt_acc")[-1].value
    ft_start = client.get_metric_history(finetune.info.run_id, "pt_acc")[0].value
    assert ft_start == pytest.approx(pt_end)
    assert finetune.data.metrics["ft_acc"] == pytest.approx(summary["finetune"]["ft_acc"])


def test_run_and_sweep_share_the_store(tiny_config, tmp_path, capsys):
    """A stage `run` finished is reused by a sweep over the same store, not retrained."""
    assert main(["run", str(tiny_config), "--no-progress"]) == 0
    first = _summary(capsys)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "again", "experiment": str(tiny_config), "analyze": False,
                                     "storage_path": str(tmp_path / "runs")}))
    assert main(["sweep", str(sweep), "--local"]) == 0
    again = [r for r in _runs() if r.data.tags.get("wrapperdist.sweep") != first["sweep_run_id"]
             and r.data.tags.get(STAGE_TAG) in ("pretrain", "finetune")]
    assert {r.data.tags[STAGE_TAG] for r in again} == {"pretrain", "finetune"}
    assert all(r.data.tags.get("wrapperdist.reused") == "true" for r in again)
    assert {r.data.tags["wrapperdist.node_key"] for r in again} == {first["pretrain"]["key"], first["finetune"]["key"]}


def test_finetune_from_run_id(tiny_config, capsys):
    assert main(["pretrain", str(tiny_config), "--no-progress"]) == 0
    first = _summary(capsys)
    assert main(["finetune", str(tiny_config), "--from", first["sweep_run_id"], "--no-progress"]) == 0
    second = _summary(capsys)
    assert second["finetune"]["checkpoint"].endswith("/model.pt")
    stages = sorted(r.data.tags.get(STAGE_TAG) for r in _runs())
    assert stages == ["finetune", "pretrain", "sweep", "sweep"]
    finetune = next(r for r in _runs() if r.data.tags.get(STAGE_TAG) == "finetune")
    # the imported start is named on the run; the same weights as the pretrain run's checkpoint
    assert finetune.data.tags["wrapperdist.init_checkpoint"] == first["sweep_run_id"]
    assert finetune.data.tags["wrapperdist.init_key"].startswith("import-")
    # the same config's own pretraining is in the store: `finetune` without --from starts there
    assert main(["finetune", str(tiny_config), "--no-progress"]) == 0
    third = _summary(capsys)
    run = mlflow.get_run(third["finetune"]["run_id"])
    assert run.data.tags["wrapperdist.node_key"] == third["finetune"]["key"] != second["finetune"]["key"]


def test_finetune_without_source_fails_clearly(tiny_config, capsys):
    assert main(["finetune", str(tiny_config)]) == 2
    assert "--from" in capsys.readouterr().err
    assert _runs() == []  # refused before anything was recorded


def test_cuda_without_a_gpu_is_refused_naming_the_field(tiny_config, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # the refusal is for machines without one
    assert main(["run", str(tiny_config), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith("resources.device: cuda") for line in err), err
    assert _runs() == []


def test_validate_command(tiny_config, tmp_path, capsys):
    assert main(["validate", str(tiny_config)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_config.read_text().replace("lr: 0.001", "lr: -1"))
    assert main(["validate", str(bad)]) == 2
    assert "finetune.optim.lr" in capsys.readouterr().err


def _verdict_from_evidence(metrics: dict[str, float], params: dict[str, str]):
    """The wrapper verdict recomputed from an analysis run's `evidence.*` metrics (the steps only where
    the threshold was reached) with its config's thresholds: independent of the label it logged."""
    from dataclasses import fields

    from wrapperdist.mech import Evidence, judge

    def value(name: str):
        if name.startswith("reft_steps_") and not metrics[f"evidence.reft_reached_{name.removeprefix('reft_steps_')}"]:
            return None
        return metrics[f"evidence.{name}"]

    e = Evidence(**{f.name: value(f.name) for f in fields(Evidence)})
    v = {k: float(params[f"analysis.verdict.{k}"]) for k in ("prune_min_gain", "probe_margin", "reft_speedup")}
    return judge(e, v["prune_min_gain"], v["probe_margin"], v["reft_speedup"])


def test_analysis_is_a_child_of_the_finetune_run(tiny_config, capsys):
    assert main(["run", str(tiny_config), "--analyze", "--no-progress"]) == 0
    summary = _summary(capsys)
    runs = {r.info.run_id: r for r in _runs()}
    analysis = runs[summary["analysis"]["run_id"]]
    assert analysis.data.tags["mlflow.parentRunId"] == summary["finetune"]["run_id"]
    # the verdict tag is what the rule gives on the logged evidence and the run's own thresholds
    verdict, metrics, params = analysis.data.tags["wrapperdist.verdict"], analysis.data.metrics, analysis.data.params
    assert verdict == _verdict_from_evidence(metrics, params).label
    assert analysis.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    assert "report.md" in {a.path for a in client.list_artifacts(analysis.info.run_id)}
    plots = {a.path for a in client.list_artifacts(analysis.info.run_id, "plots")}
    assert {f"plots/{name}.png" for name in ("pruning", "probes", "reft", "attention")} <= plots
    # curves are logged against their x-axis: K for pruning, step for reFT, depth for probes
    assert [m.step for m in client.get_metric_history(analysis.info.run_id, "prune.paper.pt_acc")] == [0, 1, 4]
    assert {"prune.paper.pt_acc_spurious", "prune.random.ft_acc_spurious", "prune.units.pt_acc",
            "answers.count_pt", "answers.count_ft", "answers.other"} <= set(analysis.data.metrics)
    assert not any(k.startswith("prune.rows.") for k in analysis.data.metrics)  # rows are the paper unit here
    reft = client.get_metric_history(analysis.info.run_id, "reft.finetuned.pt_acc")
    assert [m.step for m in reft] == [0, 10, 20]
    probe = client.get_metric_history(analysis.info.run_id, "probe.pt.fine-tuned")
    assert [m.step for m in probe] == [0, 1]  # the embeddings and the one block of the tiny model
    # the Scr.+FT control was pretrained once, under the sweep run, and is reused next time
    control = [r for r in runs.values() if r.data.tags.get("wrapperdist.role") == "control"]
    assert len(control) == 1 and control[0].data.tags["mlflow.parentRunId"] == summary["sweep_run_id"]
    # the paper's Scr.+FT: trained from scratch on the fine-tuning task alone (count b), not the mixture
    assert control[0].data.params["setting.pretrain_data"] == "task"
    report = client.download_artifacts(analysis.info.run_id, "report.md")
    assert "Verdict:" in Path(report).read_text()
    assert main(["analyze", summary["finetune"]["run_id"], "--no-progress"]) == 0
    again = _summary(capsys)
    control = [r for r in _runs() if r.data.tags.get("wrapperdist.role") == "control"]
    assert len(control) == 2 and sum(r.data.tags.get("wrapperdist.reused") == "true" for r in control) == 1
    # the second analysis (reused from the store) hangs under the same fine-tune run, with the same verdict
    second = mlflow.get_run(again["analysis"]["run_id"])
    assert second.data.tags["mlflow.parentRunId"] == summary["finetune"]["run_id"]
    assert second.data.tags["wrapperdist.verdict"] == verdict
