"""What a sweep leaves on its own MLflow run besides params: the resolved spec (after --set and
overrides) as artifacts, and the execution summary as the run's description, so the run page says
what ran and what failed. analysis/report.py later puts the report in front of that summary."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from wrapperdist.sweep.spec import Sweep
from wrapperdist.tracking import NOTE_TAG

SUMMARY_TAG = "wrapperdist.execution_summary"  # the progress summary table, for report.py to reuse


def log_spec(client: MlflowClient, run_id: str, sweep: Sweep) -> None:
    """spec/sweep.yaml (the sweep file as validated) and spec/experiment.yaml (the base experiment
    with the sweep's overrides): enough to rerun exactly this sweep."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "spec"
        folder.mkdir()
        (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep.spec.model_dump(mode="json"), sort_keys=False))
        (folder / "experiment.yaml").write_text(yaml.safe_dump(sweep.base, sort_keys=False))
        client.log_artifacts(run_id, str(folder), "spec")


def execution_note(name: str, status: str, summary: str) -> str:
    return f"**Sweep {name}: {status}**\n\n```\n{summary}\n```\n"


def set_description(client: MlflowClient, run_id: str, name: str, status: str, summary: str) -> None:
    """The run's description: the summary table (report.py adds the report above it)."""
    note = execution_note(name, status, summary) + (
        "\nThe figures and tables: `python analysis/report.py` logs them to this run (artifacts `report/`)."
    )
    client.set_tag(run_id, SUMMARY_TAG, summary[:5000])
    client.set_tag(run_id, NOTE_TAG, note)


def publish_report(client: MlflowClient, sweep_id: str, folder: Path, figures: list[str]) -> None:
    """A sweep's report on its own run, so the MLflow UI alone tells the story: the figures and
    report.md as artifacts under report/, and the report (figure links pointing at those artifacts,
    then the execution summary) as the run's description."""
    client.log_artifacts(sweep_id, str(folder), "report")
    text = (folder / "report.md").read_text()
    links = ", ".join(f"`report/{name}.png`" for name in figures)
    text = re.sub(r"^Figures: .*$", f"Figures (this run's Artifacts tab): {links}", text, flags=re.M)
    summary = client.get_run(sweep_id).data.tags.get(SUMMARY_TAG)
    if summary:
        text += f"\n## How the sweep ran\n\n```\n{summary}\n```\n"
    client.set_tag(sweep_id, NOTE_TAG, text)
