"""What a sweep needs to know when it runs on a multi-node Ray cluster, kept apart from the
executors: where each trial ran (tags on its MLflow run), how many trials may run at once on a
cluster that grows, and how long a Ray Train run waits for its workers while nodes come and go.

Why concurrency is not fixed from the resources present at start: an autoscaling cluster starts
with `min_workers: 0`, so at start it has (almost) nothing; a cap computed then is 1, the
autoscaler never sees more than one trial's demand, and the sweep stays on one node. On a cluster
we connect to, trials are instead queued by Tune on their own resource requests (pending trials are
what the autoscaler scales on), and only capped where that would deadlock (see `cluster_layout`)."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# A Ray Train trial holds a sliver of a CPU and its workers the rest, so trials x workers fit the
# cluster's CPUs exactly (a trial asking for 1 CPU beside its workers would leave cores idle).
TRAIN_TRIAL_CPU = 0.01
TRAIN_WORKER_CPU = 1 - TRAIN_TRIAL_CPU

WHERE = "where."  # report keys that say where a trial ran; never metrics
TAG_PREFIX = "wrapperdist."
# The launcher config of the cluster the driver runs on: `ray up` leaves it on the head at
# ~/ray_bootstrap_config.yaml; the local test cluster names its own through this variable.
AUTOSCALING_CONFIG_ENV = "WRAPPERDIST_AUTOSCALING_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
WORKER_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
# Set by Ray's job supervisor, with RAY_ADDRESS, in the environment of a Ray job's entry point
# (ray._private.runtime_env.constants.RAY_JOB_CONFIG_JSON_ENV_VAR): there RAY_ADDRESS is Ray's own.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


# -- which Ray -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RayTarget:
    """The Ray instance a (non --local) sweep uses: `address` None is a new local instance of its
    own; `note` says why, as the first line of the sweep's output (empty: nothing to say)."""

    address: str | None
    note: str = ""


def resolve_address(flag: str | None, env: Mapping[str, str] = os.environ) -> RayTarget:
    """`--address` attaches, and so does a Ray job (Ray sets RAY_ADDRESS for its entry point).
    A RAY_ADDRESS exported in the shell is not taken as a request to attach: it is often left over
    from an earlier cluster session, and attaching to it would run a debugging sweep on someone's
    cluster or fail on a dead address. It is ignored, and the first line says how to use it."""
    if flag:
        return RayTarget(flag, f"attaching to the Ray cluster at {flag} (--address)")
    exported = env.get(RAY_ADDRESS_ENV, "")
    if not exported:
        return RayTarget(None)
    if env.get(RAY_JOB_ENV):
        return RayTarget(exported, f"attaching to the Ray cluster at {exported} (this is a Ray job: "
                                   f"{RAY_ADDRESS_ENV} set by Ray)")
    return RayTarget(None, f"ignoring {RAY_ADDRESS_ENV}={exported} (set in the environment): starting a local "
                           f"Ray instance; to attach to that cluster, pass --address {exported}")


# -- where a trial ran -------------------------------------------------------------------------------
def node_info() -> dict[str, str]:
    """This process's Ray node id and host name (the same everywhere on the local fake cluster,
    where every node is this machine: the node id is what tells them apart)."""
    import ray

    return {"ray_node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}


class PlacementReport:
    """Wraps a trial's report function: every report also says where the trial ran, and, once a
    Ray Train run's workers are up (rank 0 says so before its first evaluation), on which nodes."""

    def __init__(self, report: Callable[[dict[str, Any]], None]):
        self.report = report
        self.where = {f"{WHERE}{k}": v for k, v in node_info().items()}

    def __call__(self, result: dict[str, Any]) -> None:
        self.report({**result, **self.where})

    def train_workers_ran_on(self, node_ids: list[str]) -> None:
        self.where[f"{WHERE}train_nodes"] = ",".join(node_ids)


def node_tags(result: dict[str, Any]) -> dict[str, str]:
    """MLflow tags from a report: wrapperdist.ray_node_id, wrapperdist.host, wrapperdist.train_nodes."""
    return {f"{TAG_PREFIX}{k[len(WHERE):]}": str(v) for k, v in result.items() if k.startswith(WHERE)}


def gather_worker_nodes() -> list[str]:
    """In a Ray Train worker: every rank's node id, in rank order (a collective: all ranks call it)."""
    import ray
    import torch.distributed as dist

    mine = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return [str(n) for n in everyone]


# -- how many trials at once ---------------------------------------------------------------------
def autoscaling_config() -> dict[str, Any] | None:
    """The launcher config of the cluster this driver runs on, if it is readable here."""
    import yaml

    path = Path(os.environ.get(AUTOSCALING_CONFIG_ENV) or BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())  # JSON is YAML too


def max_nodes(config: dict[str, Any]) -> list[dict[str, float]]:
    """The resources of every node the cluster may grow to: the head plus each worker type up to its
    max_workers, biggest nodes first, within the global max_workers."""
    types = config.get("available_node_types", {})
    head_type = config.get("head_node_type")
    workers = []
    for name, spec in types.items():
        if name != head_type:
            workers += [dict(spec.get("resources") or {})] * int(spec.get("max_workers", 0))
    workers.sort(key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), reverse=True)
    head = dict((types.get(head_type) or {}).get("resources") or {})
    return [head, *workers[: int(config.get("max_workers", len(workers)))]]


def train_trials_that_fit(nodes: list[dict[str, float]], workers: int, use_gpu: bool) -> int:
    """Ray Train trials that can run at once on these nodes: each needs `workers` worker slots
    (1 GPU + 1 CPU, or 0.99 CPU; the trial itself takes 0.01 CPU beside them)."""
    if use_gpu:
        slots = sum(min(int(n.get("GPU", 0)), int(n.get("CPU", 0))) for n in nodes)
    else:
        slots = sum(math.floor(n.get("CPU", 0) / TRAIN_WORKER_CPU + 1e-9) for n in nodes)
    return slots // workers


def cluster_layout(layout, max_concurrent_trials: int | None, config: dict[str, Any] | None = None):
    """The layout on a cluster we connected to (`--address`, or a Ray job).

    - `resources.max_concurrent_trials` given: that, even above what exists now (the autoscaler
      adds the nodes).
    - In-process trials: no cap (0). Each trial asks for its CPUs; Tune queues the rest, and the
      queue is the demand the autoscaler scales on.
    - Ray Train trials: a trial takes 0.01 CPU and its workers come later, so uncapped, every trial
      would start and most would wait for workers until Train gives up. Capped by what fits on the
      cluster at its *largest* (the launcher config), not at start; unknown config: no cap."""
    if max_concurrent_trials:
        return replace(layout, max_concurrent=max_concurrent_trials)
    if not layout.train_workers or config is None:
        return replace(layout, max_concurrent=0)
    fits = train_trials_that_fit(max_nodes(config), layout.train_workers, layout.use_gpu)
    return replace(layout, max_concurrent=max(1, fits))


def concurrency_line(layout) -> str:
    if layout.max_concurrent:
        return f"at most {layout.max_concurrent} concurrent trial(s), as the cluster grows"
    return "trials queued on their resource requests (no cap): concurrency grows with the cluster"


def train_worker_resources(use_gpu: bool, gpus: float = 1.0) -> dict[str, float]:
    """One Ray Train worker's request. CPU runs: 0.99 CPU (the trial keeps 0.01, so trials x workers
    never oversubscribe). GPU runs: 1 CPU and `gpus` of a GPU; a fraction below 1 packs several
    tiny workers on one GPU (Ray shares the device, it does not split its memory)."""
    return {"CPU": 1, "GPU": gpus} if use_gpu else {"CPU": TRAIN_WORKER_CPU}


# -- Ray Train on a cluster whose nodes come and go ------------------------------------------------
def train_failure_config():
    """Ray Train's failure handling inside a Tune trial: none of its own. A Train run that loses a
    worker, or whose worker group cannot start within RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, fails
    its trial, and Tune retries the trial (resources.max_failures) with a fresh Train run on
    whatever nodes exist then. Measured on the local cluster, both of Train's own retries leak:
    - max_failures > 0 raced with the trial's own death when the lost node also held the trial (the
      orphaned controller's placement group stayed reserved and the retry waited on it);
    - controller_failure_limit > 0: after a worker died at start-up the controller asked for a new
      worker-group placement group while its first one stayed CREATED on the surviving nodes, and
      the new one stayed PENDING for good (the node-loss test hung on it).
    A run whose controller died with a node does not release its group: the driver removes it before
    Tune's retry (`TrainRuns.release_trial`), so the retry fits in the capacity the cluster had."""
    import ray.train

    # preemptions too (Train would retry those without limit, inside the trial): one retry path, Tune's
    return ray.train.FailureConfig(max_failures=0, controller_failure_limit=0, max_preemption_failures=0)


class WhereTags:
    """For the recorder (the driver): tag a stage's run with where it ran, again whenever that
    changes (a trial retried on another node, or a Train run's worker nodes becoming known)."""

    def __init__(self):
        self.tagged: dict[str, dict[str, str]] = {}  # run id -> tags set

    def tag(self, client, run_id: str, result: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        tags = node_tags(result)
        if tags and self.tagged.get(run_id) != tags:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.tagged[run_id] = tags


def pin_autoscaling_coordinator() -> bool:
    """Create Ray's `AutoscalingCoordinator` actor now, from the driver, so that it lives on the
    driver's node (the head on a cluster). Ray Train v2 asks that detached actor for its workers'
    resources; Ray creates it on first use with a *hard* affinity to the creator's node — a Train
    controller on some worker node. When that node dies the actor can never restart (its node is
    gone) and every later Train run waits on it forever: the node-loss test hung that way. Created
    here first, `get_if_exists` makes every Train run reuse ours. Returns False where this Ray has
    no such actor (the API is internal; a Ray without it has nothing to pin)."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return False
    get_or_create_autoscaling_coordinator()
    return True
