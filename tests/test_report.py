"""analysis/report.py builds the paper-style report from a tiny real sweep (real MLflow store)."""

import importlib.util
import re
import sys
from pathlib import Path

import mlflow
import yaml
from conftest import TINY

from wrapperdist.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _report_module():
    spec = importlib.util.spec_from_file_location("report", ROOT / "analysis" / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["report"] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def test_mean_ci():
    report = _report_module()
    assert report.mean_ci([0.5]) == (0.5, 0.0)
    mean, half = report.mean_ci([0.0, 1.0])
    assert mean == 0.5 and abs(half - 12.7062 * 0.5) < 1e-3  # t(0.975, df=1) × sd / √n = 12.706 × 0.7071 / 1.4142


def test_report_from_a_real_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({**TINY, "tracking": {"experiment": "rep"}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "rep", "experiment": "exp.yaml", "storage_path": str(tmp_path / "results"),
        "grid": {"seed": [0, 1], "finetune.optim.lr": [1e-3, 3e-4]}, "revival_budgets": [10]}))
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--local"]) == 0
    path = _report_module().build_report("rep", tmp_path / "reports")
    folder = path.parent
    for name in ("accuracy", "pruning", "probes", "revival"):
        assert (folder / f"{name}.png").stat().st_size > 10_000, name
    text = path.read_text()
    runs = mlflow.search_runs(experiment_names=["rep"], output_format="list",
                              filter_string="tags.`wrapperdist.stage` = 'finetune'")
    for lr in ("0.001", "0.0003"):
        values = [r.data.metrics["ft_acc"] for r in runs if r.data.params["finetune.optim.lr"] == lr]
        assert len(values) == 2
        row = next(line for line in text.splitlines() if line.startswith(f"| medium | {float(lr):g} | "))
        assert "| 2 |" in row  # two seeds
        assert re.search(rf"\| {sum(values) / 2:.3f} ± \d\.\d{{3}} \|", row.split("| 2 |")[1]), row
        assert re.search(r"\| (\d+( ± \d+)?|never) \(\d/2 reached\) \|", row), row  # steps, never-reached counted
        assert "| - " not in row and "/ - " not in row, row  # every analysis column filled (pruning, answers)
    assert "single C_Tr value" in text and not (folder / "spurious.png").exists()
    # the floors beside the accuracies: the modal answer's (counted here from the held-out labels) and
    # a random init's, under the accuracy columns; the relation's measured rate on each set
    from collections import Counter

    from wrapperdist.config import ExperimentConfig
    from wrapperdist.settings.registry import setting_for

    cfg = ExperimentConfig.model_validate(TINY)
    held_out = setting_for(cfg).eval_tensors(cfg)
    modal = {k: Counter(a.tolist()).most_common(1)[0][1] / len(a) for k, (_, a) in held_out.items()}
    floor_row = next(line for line in text.splitlines() if line.startswith("| floor: modal answer |"))
    cells = [c.strip() for c in floor_row.split("|")[1:-1]]
    assert cells[4:9] == [f"{modal[k]:.3f}" for k in ("pt_acc", "pt_acc", "ft_acc", "ft_acc_spurious", "ft_acc_plain")]
    init_row = next(line for line in text.splitlines() if line.startswith("| floor: random init |"))
    assert re.search(r"\| \d\.\d{3}( ± \d\.\d{3})? \|", init_row), init_row
    assert "C_Te=0: 0.000, C_Te=1: 1.000, plain: 0." in text
    # the report lives on the sweep's MLflow run too: figures as artifacts, the report as its description
    client = mlflow.MlflowClient()
    sweep = mlflow.search_runs(experiment_names=["rep"], output_format="list",
                               filter_string="tags.`wrapperdist.stage` = 'sweep'")[0]
    logged = {a.path for a in client.list_artifacts(sweep.info.run_id, "report")}
    assert {"report/report.md", "report/accuracy.png", "report/revival.png"} <= logged
    note = client.get_run(sweep.info.run_id).data.tags["mlflow.note.content"]
    assert note.startswith("# Sweep rep") and "`report/accuracy.png`" in note and "## How the sweep ran" in note
    analyses = mlflow.search_runs(experiment_names=["rep"], output_format="list",
                                  filter_string="tags.`wrapperdist.stage` = 'analysis'")
    assert len(analyses) == 4
    pretrains = mlflow.search_runs(experiment_names=["rep"], output_format="list",
                                   filter_string="tags.`wrapperdist.stage` = 'pretrain'")
    for run in [*pretrains, *runs, *analyses]:  # the floors on every pretrain, fine-tune and analysis run
        assert run.data.metrics["floor.modal.ft_acc"] == modal["ft_acc"]
        assert run.data.metrics["floor.relation.ft_acc"] == 0.0
        assert run.data.metrics["floor.relation.ft_acc_spurious"] == 1.0
        assert "floor.random_init.pt_acc" in run.data.metrics
    for run in analyses:  # the compare view needs every key on every run
        assert {"verdict_wrapper", "verdict_reft_faster", "evidence.probe_gap", "evidence.reft_reached_finetuned",
                "evidence.reft_final_pt_acc_finetuned", "evidence.reft_final_pt_acc_control"} <= set(run.data.metrics)
    # the per-seed data: one record per fine-tune, with its machine, that the claims read back
    sys.path.insert(0, str(ROOT / "analysis"))
    import claims
    import runs_data

    rows = runs_data.records(client, sweep.info.experiment_id, sweep.info.run_id)
    assert len(rows) == 4 and {r["seed"] for r in rows} == {0, 1}
    assert all(r["machine"]["device"] == "cpu" and r["machine"]["cpu_capability"] for r in rows)
    runs_data.write(rows, tmp_path / "runs.jsonl")
    loaded = runs_data.load(tmp_path / "runs.jsonl")
    assert [r["ft"].start_metrics for r in loaded] == [r["start_metrics"] for r in rows]
    verdicts = dict((c.item, j.status) for c, j in claims.judge_all(loaded))
    assert verdicts["1"] == "inconclusive"  # 2 seeds < 3, whatever the numbers


def test_tab5_analogue_from_the_same_kind_of_sweep(tmp_path, monkeypatch, capsys):
    """analysis/tab5.py prints the paper's Tab. 5 cell beside the sweep's mean for each condition."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({**TINY, "tracking": {"experiment": "t5"}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "t5", "experiment": "exp.yaml", "storage_path": str(tmp_path / "results"), "analyze": False,
        "grid": {"setting.prior": ["low"], "finetune.optim.lr": [1e-3, 3e-4], "setting.spurious_fraction": [0.5]}}))
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--local"]) == 0
    spec = importlib.util.spec_from_file_location("tab5", ROOT / "analysis" / "tab5.py")
    tab5 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tab5)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("t5")
    sweep = client.search_runs([exp.experiment_id], "tags.`wrapperdist.stage` = 'sweep'")[0]
    fts = _report_module().collect(client, exp.experiment_id, sweep.info.run_id)
    lines = tab5.tables(fts)
    low = next(line for line in lines if line.startswith("| low |"))
    assert "| 100 / " in low and "| 27.1 / " in low  # the paper's pretrained count-a / count-b cells
    row = next(line for line in lines if line.startswith("| L | low | 0.5 |"))
    assert row.count(" / ") == 4 and "9.7 / " in row and "99.9 / " in row  # eta_L (1e-3 here), C_Tr 0.5
    ours = next(f for f in fts if f.lr == 1e-3).metrics["ft_acc"]
    assert row.split("|")[6].strip().endswith(f"/ {100 * ours:.1f}")  # one seed: no (zero-width) interval
    plain = next(f for f in fts if f.lr == 1e-3).metrics["ft_acc_plain"]
    assert row.split("|")[9].strip() == f"{100 * plain:.1f}"  # ours only: the paper has no plain set
    # floor rows under both tables (analyze: false, so from the fine-tunes' step-0 floors)
    modal = fts[0].metrics
    floors = [line for line in lines if line.startswith("| floor: ")]
    assert len(floors) == 4, floors
    assert floors[0] == (f"| floor: modal answer | {100 * modal['floor.modal.pt_acc']:.1f} | "
                         f"{100 * modal['floor.modal.ft_acc']:.1f} |")
    assert floors[2].split("|")[4].strip() == f"{100 * modal['floor.modal.pt_acc']:.1f}"
    assert any(line.startswith("The planted relation holds") and "C_Te=0: 0.000" in line for line in lines)
