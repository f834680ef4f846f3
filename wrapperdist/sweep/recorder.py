"""The sweep's one MLflow writer. It runs in the driver: trials (Tune actors or in-process calls)
only *report*; this object turns reports into the run tree

    sweep → pretrain → fine-tune → analysis / reFT per budget     (Scr.+FT controls under the sweep)

so a SQLite store sees a single writer however many trials run at once. On resume it re-attaches
to the interrupted sweep run, marks runs that were left RUNNING as KILLED, and skips nodes that
already have a FINISHED run."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from typing import Any

from wrapperdist.config import ExperimentConfig, config_hash, flatten
from wrapperdist.settings.registry import setting_for
from wrapperdist.store import Store, scratch_dir
from wrapperdist.sweep.cluster import WhereTags
from wrapperdist.sweep.plan import METRIC_PREFIX, Node, node_report
from wrapperdist.tracking import PARENT_TAG, STAGE_TAG, MLflowSink, Tracker, dataset_input

log = logging.getLogger(__name__)

KEY_TAG, SWEEP_TAG, SPEC_TAG = "wrapperdist.node_key", "wrapperdist.sweep", "wrapperdist.spec_hash"


def stage_data(kind: str, experiment: dict[str, Any]):
    """The data a stage generated, as an MLflow dataset input: named by setting and stage, with a
    digest of what determines it (the `setting` section and the seeds), so runs on the same data
    share a digest in the Dataset column."""
    setting = experiment.get("setting") or {}
    determines = {"stage": kind, "setting": setting, "seed": experiment.get("seed"),
                  "eval_seed": (experiment.get("eval") or {}).get("seed")}
    source = {"generator": f"wrapperdist.settings.{setting.get('name')}", **determines}
    return dataset_input(f"{setting.get('name')} {kind} data", config_hash(determines), source,
                         "evaluation" if kind == "analysis" else "training")


class SweepRecorder:
    def __init__(self, tracker: Tracker, sweep_name: str, spec_hash: str, params: dict[str, Any], store: Store,
                 resume: bool = False, outside_parents: dict[str, str] | None = None):
        self.tracker, self.client, self.store = tracker, tracker.client, store
        # node key -> MLflow run id, for inputs recorded outside this sweep (an earlier fine-tune)
        self.outside_parents = dict(outside_parents or {})
        self.finished: dict[str, str] = {}  # node key -> FINISHED run id (this sweep run, any attempt)
        self.open: dict[str, str] = {}  # node key -> RUNNING run id (this attempt)
        self.trial_nodes: dict[str, str] = {}  # Tune trial id -> node key
        self.failed: dict[str, str] = {}  # node key -> FAILED run id (still a parent for the tree)
        self.eval_keys: dict[str, set[str]] = {}  # node key -> its setting's evaluation metrics
        self.errors: dict[str, str] = {}  # node key -> the last traceback its trial reported
        self.live_step: dict[str, int] = {}  # node key -> the last step of an evaluation point sent live
        self.where = WhereTags()  # the Ray node (and host) each stage ran on, as run tags
        self.names: dict[str, str] = {}  # node key -> run name (for failures reported by trial id only)
        # Called with (event, node key, report) for every trial event: live progress (sweep/progress.py)
        self.listeners: list[Callable[[str, str, dict[str, Any]], None]] = []
        previous = self._previous(sweep_name, spec_hash) if resume else None
        if previous is not None:
            self.sweep_run_id = previous.info.run_id
            self.client.update_run(self.sweep_run_id, status="RUNNING")
            self._reattach()
        else:
            run = self.client.create_run(tracker.experiment_id, run_name=f"sweep {sweep_name}",
                                         tags={STAGE_TAG: "sweep", SWEEP_TAG: sweep_name, SPEC_TAG: spec_hash})
            self.sweep_run_id = run.info.run_id
            MLflowSink(self.client, self.sweep_run_id).log_params(params)

    # -- resume ---------------------------------------------------------------------------------
    def _previous(self, sweep_name: str, spec_hash: str):
        runs = self.client.search_runs([self.tracker.experiment_id],
                                       filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_name}' and "
                                       f"tags.`{STAGE_TAG}` = 'sweep' and tags.`{SPEC_TAG}` = '{spec_hash}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def _descendants(self) -> list:
        return self.client.search_runs([self.tracker.experiment_id],
                                       filter_string=f"tags.`{SWEEP_TAG}` = '{self.sweep_run_id}'",
                                       max_results=50_000)

    def _reattach(self) -> None:
        for run in self._descendants():
            key = run.data.tags.get(KEY_TAG)
            if run.info.status == "FINISHED" and key:
                self.finished[key] = run.info.run_id
            elif run.info.status == "RUNNING":
                # its process died with the previous driver: it will not finish
                self.client.set_terminated(run.info.run_id, "KILLED")

    # -- reports --------------------------------------------------------------------------------
    def handle(self, result: dict[str, Any], trial_id: str | None = None) -> None:
        """Route one report. Never raises: a tracking hiccup must not kill the sweep."""
        try:
            self._handle(result, trial_id)
        except Exception:  # noqa: BLE001 - logged, then the sweep goes on
            log.warning("MLflow recording failed for %s:\n%s", result.get("node_key"), traceback.format_exc())
        if "node_key" in result:
            self._notify(str(result.get("event")), result["node_key"], result)

    def _notify(self, event: str, key: str, result: dict[str, Any]) -> None:
        for listener in self.listeners:
            try:
                listener(event, key, result)
            except Exception:  # noqa: BLE001 - a display problem must not stop the sweep
                log.warning("progress listener failed:\n%s", traceback.format_exc())

    def _handle(self, result: dict[str, Any], trial_id: str | None) -> None:
        key = result["node_key"]
        self.names[key] = result.get("node_name", key)
        if trial_id:
            self.trial_nodes[trial_id] = key
        if key in self.finished:
            return  # recorded by an earlier attempt of this sweep
        event = result["event"]
        if event == "error":  # the trial's own traceback, ahead of its failure: kept for `fail`
            self.errors[key] = str(result.get("error", ""))
            return
        metrics = {k[len(METRIC_PREFIX):]: float(v) for k, v in result.items()
                   if k.startswith(METRIC_PREFIX) and isinstance(v, int | float)}
        run_id = self.open.get(key) or self._create(result, trial_id)
        self.where.tag(self.client, run_id, result)
        sink = MLflowSink(self.client, run_id)
        if event == "progress" and metrics:
            step = int(result.get("step", 0))
            if step <= self.live_step.get(key, -1):
                return  # a retried trial sending its points again: the curve has them already
            self.live_step[key] = step
            sink.log_metrics(metrics, step)
        elif event == "done":
            self._finish(run_id, key, result, metrics)

    def _create(self, result: dict[str, Any], trial_id: str | None) -> str:
        key, kind = result["node_key"], result["node_kind"]
        parent_key = result.get("node_parent") or ""
        parent = (self.finished.get(parent_key) or self.open.get(parent_key) or self.failed.get(parent_key)
                  or self.outside_parents.get(parent_key) or self.sweep_run_id)
        if result.get("node_role") == "control":
            parent = self.sweep_run_id
        tags = {STAGE_TAG: kind, KEY_TAG: key, SWEEP_TAG: self.sweep_run_id, PARENT_TAG: parent,
                "wrapperdist.config_hash": key.split("-", 1)[1], "wrapperdist.role": result.get("node_role", "")}
        if trial_id:
            tags["ray.tune.trial_id"] = trial_id
        run = self.client.create_run(self.tracker.experiment_id, run_name=result["node_name"], tags=tags)
        experiment = json.loads(result.get("node_experiment") or "{}")
        if experiment:
            cfg = ExperimentConfig.model_validate(experiment)
            self.eval_keys[key] = set(setting_for(cfg).eval_metrics)
        params = flatten(experiment)
        if result.get("node_budget"):
            params["reft.budget"] = result["node_budget"]
        if result.get("runtime_threads"):  # how it ran (not part of its identity): torch threads of the trial
            params["runtime.threads"] = result["runtime_threads"]
        MLflowSink(self.client, run.info.run_id).log_params(params)
        if experiment:
            MLflowSink(self.client, run.info.run_id).log_inputs([stage_data(kind, experiment)])
        self.open[key] = run.info.run_id
        return run.info.run_id

    def _finish(self, run_id: str, key: str, result: dict[str, Any], metrics: dict[str, float]) -> None:
        sink = MLflowSink(self.client, run_id)
        cached = bool(result.get("cached"))
        if cached:
            sink.set_tags({"wrapperdist.reused": "true"})
        history = self.store.read_json(key, "history.json")
        # training stages sent their evaluation points live; everything else is replayed now
        sent_live = not cached and result["node_kind"] != "analysis"
        live = self.eval_keys.get(key, set()) if sent_live else set()
        replay = [(step, point) for step, point in history if not live & point.keys()]  # evals went out live
        sink.log_history(replay)
        # final values not already in the curves (evidence, verdict) go at the last step
        last = max((step for step, _ in history), default=0)
        seen = {k for _, point in history for k in point}
        extra = {k: v for k, v in metrics.items() if k not in seen}
        if extra:
            sink.log_metrics(extra, last)
        self._log_artifacts(run_id, key)
        if result["node_kind"] == "analysis":
            verdict = self.store.read_json(key, "verdict.json")
            sink.set_tags({"wrapperdist.verdict": verdict["label"]})
        self.client.set_terminated(run_id, "FINISHED")
        self.open.pop(key, None)
        self.finished[key] = run_id

    def _log_artifacts(self, run_id: str, key: str) -> None:
        folder = self.store.fetch(key, scratch_dir("artifacts"))
        for name in self.store.files(key):
            if name == "model.pt":
                self.client.log_artifact(run_id, str(folder / name), "checkpoint")
            elif name.endswith(".png"):
                self.client.log_artifact(run_id, str(folder / name), "plots")
            elif name.endswith(".md"):
                self.client.log_artifact(run_id, str(folder / name))

    # -- failures and the end ---------------------------------------------------------------------
    def fail(self, node: Node | None, error: str | None, trial_id: str | None = None) -> None:
        """Record a node's failure; `error` None: Tune did not say why (the trial's report may have)."""
        key = node.key if node else self.trial_nodes.get(trial_id or "")
        if key is None or key in self.finished:
            return
        error = error or self.errors.get(key) or "trial failed"
        try:
            run_id = self.open.get(key)
            if run_id is None and node is not None:
                run_id = self._create({**node_report(node, with_config=True), "event": "start"}, trial_id)
            if run_id is None:
                return
            MLflowSink(self.client, run_id).set_tags({"wrapperdist.error": error[-4000:]})
            self.client.set_terminated(run_id, "FAILED")
            self.open.pop(key, None)
            self.failed[key] = run_id
        except Exception:  # noqa: BLE001
            log.warning("could not record failure of %s:\n%s", key, traceback.format_exc())
        name = node.name if node else self.names.get(key, key)
        self._notify("fail", key, {"node_key": key, "node_name": name, "error": error})

    def stopped(self, trial_id: str) -> None:
        """A trial ended without finishing its stage: a scheduler (ASHA) stopped it early."""
        key = self.trial_nodes.get(trial_id)
        run_id = self.open.pop(key, None) if key else None
        if run_id:
            self._notify("stopped", key, {"node_key": key, "node_name": self.names.get(key, key)})
            MLflowSink(self.client, run_id).set_tags({"wrapperdist.stopped_early": "true"})
            self.client.set_terminated(run_id, "KILLED")

    def close(self, status: str = "FINISHED") -> None:
        for run_id in self.open.values():
            self.client.set_terminated(run_id, "KILLED")
        self.open.clear()
        MLflowSink(self.client, self.sweep_run_id).log_metrics(
            {"nodes_finished": float(len(self.finished)), "nodes_failed": float(len(self.failed))}, 0)
        self.client.set_terminated(self.sweep_run_id, status)
