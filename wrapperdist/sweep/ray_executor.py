"""The Ray Tune executor: one Tune experiment per phase. Trials are plain function trainables (cheap
to start); with resources.train_workers > 0 each training trial drives a TorchTrainer of that many
workers. Nodes travel to trials as objects (`tune.with_parameters`); the param space holds only
their keys (grid) or the searcher's sampled values (search)."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from wrapperdist.config import ExperimentConfig
from wrapperdist.store import Store
from wrapperdist.sweep.cluster import PlacementReport
from wrapperdist.sweep.executors import Layout, StudyRef
from wrapperdist.sweep.plan import METRIC_PREFIX, Node, finetune_node, node_from_report, node_report
from wrapperdist.sweep.ray_callback import MLflowTreeCallback
from wrapperdist.sweep.ray_train import ray_train_backend
from wrapperdist.sweep.recorder import SweepRecorder
from wrapperdist.sweep.spec import SearchConfig, Sweep
from wrapperdist.sweep.study import open_study, searched_config
from wrapperdist.sweep.train_runs import StopTrainRuns, train_runs
from wrapperdist.sweep.trials import NodeOutcome, run_node

NODE_KEY = "node"  # the param-space entry naming the node a trial runs; every other entry was sampled


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a phase shares (sent once through the object store)."""

    nodes: dict[str, Node]
    store: str
    layout: Layout
    storage: str
    run_name: str
    train_runs: Any = None  # the driver's TrainRuns actor, where Ray Train runs report (train_workers > 0)
    search_metric: str | None = None  # the Tune key a searcher reads from every report (searched phases)


def error_report(node: Node, error: str, search_metric: str | None) -> dict[str, Any]:
    """The report a crashed trial sends before it raises. A searcher reads its metric from every
    report (OptunaSearch.on_trial_result indexes it), so a searched trial's error report carries it
    as NaN: a number that is no result, which Optuna records as a failed trial."""
    report: dict[str, Any] = {**node_report(node), "event": "error", "error": error[-4000:]}
    if search_metric is not None:
        report[search_metric] = float("nan")
    return report


def node_of_trial(config: dict[str, Any], trial_id: str, nodes: dict[str, Node]) -> Node:
    """The node a Tune trial runs: given (grid), or built from the sampled settings (search)."""
    node = nodes[config[NODE_KEY]]
    sampled = {k: v for k, v in config.items() if k != NODE_KEY}
    if not sampled:
        return node
    return finetune_node(searched_config(node.config, sampled, f"{node.config.name} {trial_id}"))


def _tune_trainable(config: dict[str, Any], context: TrialContext) -> None:
    """A Tune function trial: one node (grid), or one sampled fine-tune (search)."""
    trial_id = tune.get_context().get_trial_id()
    report = PlacementReport(tune.report)  # every report also says on which Ray node the trial ran
    node = node_of_trial(config, trial_id, context.nodes)
    sampled = node.key != config[NODE_KEY]
    layout = context.layout
    backend = None
    if layout.train_workers and node.kind in ("pretrain", "finetune", "reft"):
        backend = ray_train_backend(report, layout.train_workers, layout.use_gpu, context.storage,
                                    context.run_name, context.train_runs, trial_id, layout.worker_start_timeout_s)
    try:
        outcome = run_node(node, Store(context.store), report, layout.runtime(node.kind), backend,
                           announce=not sampled)
    except Exception:
        # the error text reaches the recorder with the trial's own reports: Tune's error file may not be
        # readable from the driver (remote storage, a lost node) when the trial's end is logged
        report(error_report(node, traceback.format_exc(), context.search_metric))
        raise
    if not outcome.metrics:
        tune.report({"event": "empty"})


class RayExecutor:
    def __init__(self, sweep: Sweep, store: Store, recorder: SweepRecorder, layout: Layout, storage_path: str):
        self.sweep, self.store, self.recorder, self.layout = sweep, store, recorder, layout
        self.storage_path = storage_path
        self.train_runs = None  # created on first use, kept for every phase

    def _tuner(self, phase: str, nodes: dict[str, Node], param_space: dict[str, Any], layout: Layout,
               **tune_kwargs):
        callbacks = [MLflowTreeCallback(self.recorder, lambda cfg, tid: node_of_trial(cfg, tid, nodes)),
                     JsonLoggerCallback()]
        if layout.train_workers:
            if self.train_runs is None:
                self.train_runs = train_runs()
            # first: a stopped trial's Train run ends before anything else handles the trial's end
            callbacks.insert(0, StopTrainRuns(self.train_runs))
        context = TrialContext(nodes, self.store.uri, layout, self.storage_path, f"{self.sweep.spec.name}-{phase}",
                               self.train_runs, tune_kwargs.get("metric"))
        kinds = {n.kind for n in nodes.values()}
        if len(kinds) == 1:
            resources: Any = layout.request(kinds.pop())
        else:  # a phase of analyses and reFTs: each trial asks for its own node's resources
            def resources(config: dict[str, Any]) -> tune.PlacementGroupFactory:
                request = layout.request(nodes[config[NODE_KEY]].kind)
                return tune.PlacementGroupFactory([{k.upper(): v for k, v in request.items()}])
        trainable = tune.with_resources(tune.with_parameters(_tune_trainable, context=context), resources)
        return tune.Tuner(
            trainable,
            param_space=param_space,
            # Warm actors save in-process trials a process start each. Not with Ray Train: a cached
            # trial actor holds its CPU share, and the next TorchTrainer's workers no longer fit.
            tune_config=tune.TuneConfig(max_concurrent_trials=layout.max_concurrent,
                                        reuse_actors=not layout.train_workers, **tune_kwargs),
            run_config=tune.RunConfig(
                name=f"{self.sweep.spec.name}-{phase}", storage_path=self.storage_path, verbose=0,
                failure_config=tune.FailureConfig(max_failures=self.sweep.spec.resources.max_failures),
                # the JSON results keep Tune's ResultGrid readable; CSV/TensorBoard would only add work
                callbacks=callbacks,
            ),
        )

    def run_nodes(self, nodes: list[Node], phase: str) -> list[NodeOutcome]:
        if not nodes:
            return []
        layout = self.layout.for_phase(len(nodes))
        by_key = {n.key: n for n in nodes}
        results = self._tuner(phase, by_key, {NODE_KEY: tune.grid_search(list(by_key))}, layout).fit()
        return _outcomes(results, by_key)

    def search(self, base: ExperimentConfig, search: SearchConfig, phase: str, study: StudyRef) -> list[NodeOutcome]:
        import optuna

        opened = open_study(study.url, study.name, search, base, self.store, self.recorder.handle)
        if not opened.remaining:
            return opened.previous
        space = {k: _tune_distribution(d) for k, d in search.space.items()}
        scheduler = None
        if search.asha:
            scheduler = ASHAScheduler(max_t=search.asha.max_t, grace_period=search.asha.grace_period,
                                      reduction_factor=search.asha.reduction_factor)
        # OptunaSearch loads the study by name from the storage (load_if_exists) and asks/tells there
        searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=opened.sampler_seed),
                                storage=optuna.storages.RDBStorage(study.url), study_name=study.name)
        node = finetune_node(base)
        results = self._tuner(phase, {node.key: node}, {NODE_KEY: node.key, **space}, self.layout,
                              metric=f"{METRIC_PREFIX}{search.metric}", mode=search.mode,
                              num_samples=opened.remaining, search_alg=searcher, scheduler=scheduler).fit()
        return opened.previous + _outcomes(results, {})


def _tune_distribution(d):
    if d.loguniform:
        return tune.loguniform(*d.loguniform)
    if d.uniform:
        return tune.uniform(*d.uniform)
    if d.randint:
        return tune.randint(*d.randint)
    return tune.choice(d.choice)


def _outcomes(results, known: dict[str, Node]) -> list[NodeOutcome]:
    """The finished trials' nodes (known ones by key; searched ones rebuilt from their report)."""
    outcomes = []
    for result in results:
        m = result.metrics or {}
        if result.error is None and m.get("event") == "done":
            node = known.get(m["node_key"]) or node_from_report(m)
            metrics = {k[len(METRIC_PREFIX):]: v for k, v in m.items() if k.startswith(METRIC_PREFIX)}
            outcomes.append(NodeOutcome(node, bool(m.get("cached")), metrics))
    return outcomes

