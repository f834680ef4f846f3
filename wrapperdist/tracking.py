"""MLflow: where runs are stored, the tags the run tree (sweep → stage runs) is built with, and a
Sink that writes to one run. The sweep's recorder (sweep/recorder.py) is the one writer of stage
runs in a process, which keeps a SQLite store free of concurrent-writer locks; publish.py adds the
sweep run's description and report, cluster.py its where-it-ran tags.

Store: `$MLFLOW_TRACKING_URI` if set, else the config's `tracking.tracking_uri`, else
`sqlite:///<cwd>/mlflow.db` — the store that `mlflow ui`, started in the same directory with no
arguments, opens.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

STAGE_TAG = "wrapperdist.stage"
NOTE_TAG = "mlflow.note.content"  # the run's description, rendered as Markdown on its page
# MLflow 3's UI opens an experiment on its GenAI (traces) view; this query opens the runs table.
RUNS_VIEW = "runs?workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default (localhost only)
STORE_TAG = "wrapperdist.store"  # on a sweep run: its stage store (absolute path or URI)
OVERRIDES_TAG = "wrapperdist.overrides"  # the --set arguments a sweep (or run) was started with
PARENT_TAG = "mlflow.parentRunId"  # the tag the MLflow UI nests runs by
MAX_PARAM_LEN = 6000


def resolve_tracking_uri(configured: str | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The UI address of an experiment's training-runs table (or of one run's page)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    page = f"runs/{run_id}" if run_id else RUNS_VIEW
    return f"{base}/#/experiments/{experiment_id}/{page}"


def ui_hint(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """How to look at the runs: the address, and for a local store the command that serves it
    (naming the store, so it is the right one whatever MLFLOW_TRACKING_URI or the CWD are)."""
    url = ui_url(tracking_uri, experiment_id, run_id)
    if tracking_uri.startswith(("http://", "https://")):
        return f"browse it: {url}"
    return f"browse it: mlflow ui --backend-store-uri {tracking_uri}   then open {url}"


def dataset_input(name: str, digest: str, source: dict[str, Any], context: str) -> DatasetInput:
    """A generated data set as an MLflow dataset input (the runs table's Dataset column): the
    source is the generator and its config, since there is no file to point at."""
    dataset = Dataset(name=name, digest=digest, source_type="code", source=json.dumps(source, sort_keys=True))
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


class MLflowSink:
    """A Sink writing to one MLflow run through the client API (no global "active run" state)."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_history(self, history: list[tuple[int, dict[str, float]]]) -> None:
        """Many (step, metrics) points in as few requests as MLflow allows (1000 values each)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for step, point in history for k, v in point.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_figure(self, figure: Any, name: str) -> None:
        self.client.log_figure(self.run_id, figure, name)

    def log_inputs(self, inputs: list[DatasetInput]) -> None:
        self.client.log_inputs(self.run_id, datasets=inputs)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


class Tracker:
    """Creates runs in one experiment and closes them with the right status."""

    def __init__(self, experiment: str, tracking_uri: str | None = None):
        self.uri = resolve_tracking_uri(tracking_uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=self._artifact_root(experiment)
            )

    def _artifact_root(self, experiment: str) -> str | None:
        """Next to a local SQLite store, keep artifacts beside the db (not wherever the CWD was)."""
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///"))
            return (db.parent / "mlartifacts" / experiment).resolve().as_uri()
        return None

    def children(self, parent_id: str) -> list:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'"
        )

    def stage_checkpoint(self, run_id: str, stage: str, dest: Path) -> Path:
        """The checkpoint of `stage` in run `run_id`: the run itself if it is that stage, else its
        child of that stage. Downloaded to `dest` (works against remote artifact stores too)."""
        run = self.client.get_run(run_id)
        if run.data.tags.get(STAGE_TAG) != stage:
            matches = [r for r in self.children(run_id) if r.data.tags.get(STAGE_TAG) == stage]
            if not matches:
                raise ValueError(f"run {run_id} is not a {stage} run and has no {stage} child run")
            run = matches[0]
        dest.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="checkpoint/model.pt", dst_path=str(dest),
            tracking_uri=self.uri,
        )
        return Path(local)
