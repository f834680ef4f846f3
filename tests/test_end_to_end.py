"""A tiny real pretrain → fine-tune through the CLI, checked in MLflow with search_runs."""

import json

import mlflow
import pytest

from wrapperdist.cli import main
from wrapperdist.tracking import STAGE_TAG


def _runs(experiment="test"):
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_run_records_parent_and_children(tiny_config, capsys):
    assert main(["run", str(tiny_config)]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n\nMLflow store")[0])
    runs = _runs()
    parents = [r for r in runs if r.data.tags.get(STAGE_TAG) == "invocation"]
    assert len(parents) == 1 and parents[0].info.run_id == summary["parent_run_id"]
    parent = parents[0]
    children = {r.data.tags[STAGE_TAG]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"pretrain", "finetune"}
    for run in [parent, *children.values()]:
        assert run.info.status == "FINISHED"
        assert run.data.params["finetune.optim.lr"] == "0.001"
        assert run.data.params["model.d_model"] == "16"
    client = mlflow.MlflowClient()
    for stage, run in children.items():
        history = client.get_metric_history(run.info.run_id, "pt_acc")
        assert [m.step for m in history] == [0, 10, 20, 30][: len(history)] and len(history) >= 3
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert artifacts == {"checkpoint/model.pt"}, stage
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert plots == {f"plots/{stage}_curves.png"}
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # The fine-tune starts where pretraining ended: same weights, same step-0 evaluation.
    pt_end = client.get_metric_history(children["pretrain"].info.run_id, "pt_acc")[-1].value
    ft_start = client.get_metric_history(children["finetune"].info.run_id, "pt_acc")[0].value
    assert ft_start == pytest.approx(pt_end)
    assert parent.data.metrics["finetune.ft_acc"] == pytest.approx(summary["finetune"]["ft_acc"])


def test_finetune_from_run_id(tiny_config, capsys):
    assert main(["pretrain", str(tiny_config)]) == 0
    first = json.loads(capsys.readouterr().out.split("\n\nMLflow store")[0])
    assert main(["finetune", str(tiny_config), "--from", first["parent_run_id"]]) == 0
    second = json.loads(capsys.readouterr().out.split("\n\nMLflow store")[0])
    assert second["finetune"]["checkpoint"].endswith("finetune/model.pt")
    stages = sorted(r.data.tags.get(STAGE_TAG) for r in _runs())
    assert stages == ["finetune", "invocation", "invocation", "pretrain"]


def test_finetune_without_source_fails_clearly(tiny_config, capsys):
    assert main(["finetune", str(tiny_config)]) == 2
    assert "--from" in capsys.readouterr().err
    # the invocation run that failed is closed, not left RUNNING
    assert [r.info.status for r in _runs()] == ["FAILED"]


def test_validate_command(tiny_config, tmp_path, capsys):
    assert main(["validate", str(tiny_config)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_config.read_text().replace("lr: 0.001", "lr: -1"))
    assert main(["validate", str(bad)]) == 2
    assert "finetune.optim.lr" in capsys.readouterr().err


def test_analysis_is_a_child_of_the_finetune_run(tiny_config, capsys):
    assert main(["run", str(tiny_config), "--analyze"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n\nMLflow store")[0])
    runs = {r.info.run_id: r for r in _runs()}
    analysis = runs[summary["analysis"]["run_id"]]
    assert analysis.data.tags["mlflow.parentRunId"] == summary["finetune"]["run_id"]
    # the verdict tag is the one the logged evidence implies
    verdict, metrics = analysis.data.tags["wrapperdist.verdict"], analysis.data.metrics
    assert (verdict == "wrapper") == (metrics["verdict_wrapper"] == 1.0)
    assert (verdict == "capability changed") == (metrics["verdict_capability_changed"] == 1.0)
    assert analysis.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    files = {a.path for a in client.list_artifacts(analysis.info.run_id)}
    assert {"report.md", "pruning.png", "probes.png", "reft.png", "attention.png"} <= files
    # curves are logged against their x-axis: K for pruning, step for reFT, depth for probes
    assert [m.step for m in client.get_metric_history(analysis.info.run_id, "prune.paper.pt_acc")] == [0, 1, 4]
    assert {"prune.paper.pt_acc_spurious", "prune.random.ft_acc_spurious", "prune.units.pt_acc",
            "answers.count_pt", "answers.count_ft", "answers.other"} <= set(analysis.data.metrics)
    assert not any(k.startswith("prune.rows.") for k in analysis.data.metrics)  # rows are the paper unit here
    reft = client.get_metric_history(analysis.info.run_id, "reft.finetuned.pt_acc")
    assert [m.step for m in reft] == [0, 10, 20]
    probe = client.get_metric_history(analysis.info.run_id, "probe.pt.fine-tuned")
    assert [m.step for m in probe] == [0, 1]  # the embeddings and the one block of the tiny model
    # the Scr.+FT control was pretrained once, as a child of the analysis run, and is reused next time
    control = [r for r in runs.values() if r.data.tags.get("wrapperdist.role") == "control"]
    assert len(control) == 1 and control[0].data.tags["mlflow.parentRunId"] == analysis.info.run_id
    # the paper's Scr.+FT: trained from scratch on the fine-tuning task alone (count b), not the mixture
    assert control[0].data.params["setting.pretrain_data"] == "task"
    report = (tiny_config.parent / "runs").rglob("report.md")
    assert "Verdict:" in next(report).read_text()
    assert main(["analyze", summary["parent_run_id"]]) == 0
    again = [r for r in _runs() if r.data.tags.get("wrapperdist.role") == "control"]
    assert len(again) == 1  # reused, not retrained
