"""Executors: run a plan's phases — pretrain, fine-tune (grid or Optuna search), then analysis and
reFT — either in this process (`--local`: no Ray, breakpoints work) or as Ray Tune trials. Both
call the same `run_node`, and both feed the same recorder, which is the only MLflow writer."""

from __future__ import annotations

import copy
import logging
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wrapperdist.config import ExperimentConfig, default_threads
from wrapperdist.store import Store
from wrapperdist.sweep.plan import METRIC_PREFIX, Node, Plan, downstream_nodes, finetune_node
from wrapperdist.sweep.recorder import SweepRecorder
from wrapperdist.sweep.spec import SearchConfig, Sweep, set_dotted
from wrapperdist.sweep.trials import NodeOutcome, run_node

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """How trials share the machine: concurrency × threads per trial never exceeds the CPUs."""

    cpus: int
    threads_per_trial: int
    max_concurrent: int
    train_workers: int
    use_gpu: bool

    def for_phase(self, n_nodes: int) -> Layout:
        """A phase with fewer nodes than slots gives each trial more threads (1 pretrain on 2 CPUs
        runs with 2 threads, not 1 thread and an idle core)."""
        if self.train_workers or n_nodes >= self.max_concurrent or n_nodes == 0:
            return self
        threads = max(self.threads_per_trial, self.cpus // n_nodes)
        return Layout(self.cpus, threads, n_nodes, self.train_workers, self.use_gpu)

    def describe(self) -> str:
        if self.train_workers:
            return (f"{self.max_concurrent} concurrent trial(s), each a Ray Train run of {self.train_workers} DDP "
                    f"worker(s) × 1 torch thread{' + 1 GPU' if self.use_gpu else ''} on {self.cpus} CPUs")
        return (f"{self.max_concurrent} concurrent trial(s) × {self.threads_per_trial} torch thread(s) "
                f"on {self.cpus} CPUs")


def layout_for(sweep: Sweep, cpus: int | None = None, gpus: int = 0) -> Layout:
    """`cpus`/`gpus`: what the Ray cluster has (default: resources.cpus, else this machine)."""
    r = sweep.spec.resources
    cpus = r.cpus or cpus or default_threads()
    if r.train_workers:
        if r.use_gpu:
            fits = max(1, gpus // r.train_workers)
        else:
            fits = max(1, math.floor(cpus / (0.01 + 0.99 * r.train_workers)))
        return Layout(cpus, 1, min(r.max_concurrent_trials or fits, fits), r.train_workers, r.use_gpu)
    threads = min(r.cpus_per_trial, cpus)
    fits = max(1, cpus // threads)
    return Layout(cpus, threads, min(r.max_concurrent_trials or fits, fits), 0, r.use_gpu)


def for_execution(node: Node, layout: Layout) -> Node:
    """Thread count and progress bars are execution details: not part of the node's identity."""
    experiment = {**node.experiment, "torch_threads": layout.threads_per_trial, "progress": False}
    return Node.from_dict({**node.to_dict(), "experiment": experiment})


def searched_config(base: dict[str, Any], sampled: dict[str, Any], name: str) -> ExperimentConfig:
    data = copy.deepcopy(base)
    for path, value in sampled.items():
        set_dotted(data, path, value)
    data["name"] = name
    return ExperimentConfig.model_validate(data)


# ---------------------------------------------------------------------------------------------------
# In-process


class LocalExecutor:
    """Runs every node in this process, one after another. Retries per resources.max_failures."""

    def __init__(self, sweep: Sweep, store: Store, recorder: SweepRecorder, layout: Layout):
        self.sweep, self.store, self.recorder, self.layout = sweep, store, recorder, layout

    def _run(self, node: Node) -> NodeOutcome | None:
        node = for_execution(node, self.layout)
        for attempt in range(self.sweep.spec.resources.max_failures + 1):
            try:
                return run_node(node, self.store, self.recorder.handle)
            except Exception:  # noqa: BLE001 - recorded as FAILED; the sweep goes on
                error = traceback.format_exc()
                log.warning("node %s failed (attempt %d):\n%s", node.key, attempt + 1, error)
        self.recorder.fail(node, error)
        return None

    def run_nodes(self, nodes: list[Node]) -> list[NodeOutcome]:
        return [o for o in (self._run(n) for n in nodes) if o is not None]

    def search(self, base: ExperimentConfig, search: SearchConfig) -> list[NodeOutcome]:
        """Optuna's own ask/tell loop in-process (ASHA needs Ray Tune and is not applied here)."""
        import optuna

        distributions = {k: _optuna_distribution(d) for k, d in search.space.items()}
        study = optuna.create_study(direction="maximize" if search.mode == "max" else "minimize",
                                    sampler=optuna.samplers.TPESampler(seed=search.seed))
        outcomes = []
        for i in range(search.num_samples):
            trial = study.ask(distributions)
            cfg = searched_config(base.model_dump(mode="json"), trial.params, f"{base.name} #{i}")
            outcome = self._run(finetune_node(cfg))
            if outcome is None or search.metric not in outcome.metrics:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            study.tell(trial, outcome.metrics[search.metric])
            outcomes.append(outcome)
        return outcomes


def _optuna_distribution(d):
    import optuna.distributions as od

    if d.loguniform:
        return od.FloatDistribution(*d.loguniform, log=True)
    if d.uniform:
        return od.FloatDistribution(*d.uniform)
    if d.randint:
        return od.IntDistribution(d.randint[0], d.randint[1] - 1)
    return od.CategoricalDistribution(d.choice)


# ---------------------------------------------------------------------------------------------------
# Ray Tune


EXECUTION_KEYS = ("node", "store", "layout", "run_name", "storage")


def node_of_trial(config: dict[str, Any], trial_id: str) -> Node:
    """The node a Tune trial runs: given (grid), or built from the sampled settings (search)."""
    node = Node.from_dict(config["node"])
    sampled = {k: v for k, v in config.items() if k not in EXECUTION_KEYS}
    if not sampled:
        return node
    cfg = searched_config(node.experiment, sampled, f"{node.config().name} {trial_id}")
    searched = finetune_node(cfg)
    return Node.from_dict({**searched.to_dict(), "experiment": {**searched.experiment, **_exec_fields(config)}})


def _tune_trainable(config: dict[str, Any]) -> None:
    """A Tune function trial: one node (grid), or one sampled fine-tune (search)."""
    from ray import tune

    from wrapperdist.sweep.cluster import NodeReport
    from wrapperdist.sweep.ray_train import ray_train_backend

    report = NodeReport(tune.report)  # every report also says on which Ray node the trial ran
    node = node_of_trial(config, tune.get_context().get_trial_id())
    sampled = node.key != Node.from_dict(config["node"]).key
    store = Store(config["store"])
    layout = config["layout"]
    backend = None
    if layout["train_workers"] and node.kind in ("pretrain", "finetune", "reft"):
        backend = ray_train_backend(report, layout["train_workers"], layout["use_gpu"], config["storage"],
                                    config["run_name"])
    outcome = run_node(node, store, report, backend, announce=not sampled)
    if not outcome.metrics:
        tune.report({"event": "empty"})


def _exec_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {"torch_threads": config["layout"]["threads_per_trial"], "progress": False}


class RayExecutor:
    """One Tune experiment per phase. Trials are plain function trainables (cheap to start); with
    resources.train_workers > 0 each training trial drives a TorchTrainer of that many workers."""

    def __init__(self, sweep: Sweep, store: Store, recorder: SweepRecorder, layout: Layout, storage_path: str):
        self.sweep, self.store, self.recorder, self.layout = sweep, store, recorder, layout
        self.storage_path = storage_path

    def _tuner(self, phase: str, param_space: dict[str, Any], layout: Layout, **tune_kwargs):
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback

        from wrapperdist.sweep.ray_callback import MLflowTreeCallback

        resources = {"cpu": 0.01} if layout.train_workers else {"cpu": layout.threads_per_trial}
        common = {"store": self.store.uri, "layout": layout.__dict__, "storage": self.storage_path,
                  "run_name": f"{self.sweep.spec.name}-{phase}"}
        return tune.Tuner(
            tune.with_resources(_tune_trainable, resources),
            param_space={**param_space, **common},
            # Warm actors save in-process trials a process start each. Not with Ray Train: a cached
            # trial actor holds its CPU share, and the next TorchTrainer's workers no longer fit.
            tune_config=tune.TuneConfig(max_concurrent_trials=layout.max_concurrent,
                                        reuse_actors=not layout.train_workers, **tune_kwargs),
            run_config=tune.RunConfig(
                name=f"{self.sweep.spec.name}-{phase}", storage_path=self.storage_path, verbose=0,
                failure_config=tune.FailureConfig(max_failures=self.sweep.spec.resources.max_failures),
                # the JSON results keep Tune's ResultGrid readable; CSV/TensorBoard would only add work
                callbacks=[MLflowTreeCallback(self.recorder), JsonLoggerCallback()],
            ),
        )

    def run_nodes(self, nodes: list[Node], phase: str) -> list[NodeOutcome]:
        from ray import tune

        if not nodes:
            return []
        layout = self.layout.for_phase(len(nodes))
        grid = tune.grid_search([for_execution(n, layout).to_dict() for n in nodes])
        results = self._tuner(phase, {"node": grid}, layout).fit()
        return _outcomes(results)

    def search(self, base: ExperimentConfig, search: SearchConfig, phase: str) -> list[NodeOutcome]:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        space = {k: _tune_distribution(tune, d) for k, d in search.space.items()}
        metric = f"{METRIC_PREFIX}{search.metric}"
        scheduler = None
        if search.asha:
            scheduler = ASHAScheduler(max_t=search.asha.max_t, grace_period=search.asha.grace_period,
                                      reduction_factor=search.asha.reduction_factor)
        node = for_execution(finetune_node(base), self.layout)
        results = self._tuner(phase, {"node": node.to_dict(), **space}, self.layout, metric=metric, mode=search.mode,
                              num_samples=search.num_samples, search_alg=OptunaSearch(seed=search.seed),
                              scheduler=scheduler).fit()
        return _outcomes(results)


def _tune_distribution(tune, d):
    if d.loguniform:
        return tune.loguniform(*d.loguniform)
    if d.uniform:
        return tune.uniform(*d.uniform)
    if d.randint:
        return tune.randint(*d.randint)
    return tune.choice(d.choice)


def _outcomes(results) -> list[NodeOutcome]:
    outcomes = []
    for result in results:
        m = result.metrics or {}
        if result.error is None and m.get("event") == "done":
            node = Node.from_dict({"kind": m["node_kind"], "key": m["node_key"], "parent": m["node_parent"] or None,
                                   "name": m["node_name"], "experiment": _json(m.get("node_experiment")),
                                   "budget": m.get("node_budget") or None, "role": m["node_role"]})
            metrics = {k[len(METRIC_PREFIX):]: v for k, v in m.items() if k.startswith(METRIC_PREFIX)}
            outcomes.append(NodeOutcome(node, bool(m.get("cached")), metrics))
    return outcomes


def _json(text: str | None) -> dict[str, Any]:
    import json

    return json.loads(text) if text else {}


# ---------------------------------------------------------------------------------------------------


def execute(plan: Plan, sweep: Sweep, runner: LocalExecutor | RayExecutor,
            progress: Callable[[str], None] = print) -> dict[str, int]:
    """Phases in order; a node whose inputs failed fails too (recorded), the others go on."""
    is_ray = isinstance(runner, RayExecutor)

    def phase(nodes: list[Node], name: str) -> list[NodeOutcome]:
        progress(f"phase {name}: {len(nodes)} node(s)")
        return runner.run_nodes(nodes, name) if is_ray else runner.run_nodes(nodes)  # type: ignore[call-arg]

    done_pre = phase(plan.pretrain, "pretrain")
    if sweep.spec.search:
        finetuned = []
        for i, point in enumerate(sweep.points):
            progress(f"phase finetune (search {i + 1}/{len(sweep.points)}): {sweep.spec.search.num_samples} trial(s)")
            if is_ray:
                finetuned += runner.search(point, sweep.spec.search, f"finetune-search-{i}")  # type: ignore[call-arg]
            else:
                finetuned += runner.search(point, sweep.spec.search)  # type: ignore[call-arg]
        downstream = [n for o in finetuned
                      for n in downstream_nodes(o.node.config(), sweep.spec.revival_budgets, sweep.spec.analyze)]
        downstream = list({n.key: n for n in downstream}.values())
    else:
        finetuned = phase(plan.finetune, "finetune")
        downstream = plan.downstream
    done_down = phase(downstream, "analysis")
    return {"pretrain": len(done_pre), "finetune": len(finetuned), "downstream": len(done_down),
            "failed": len(runner.recorder.failed)}
