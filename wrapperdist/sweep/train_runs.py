"""The sweep's Ray Train runs, as the driver sees them: `TrainRuns`, a driver-owned actor where each
run posts its placement group, worker nodes and live reports, and `StopTrainRuns`, the Tune callback
that frees what a stopped or failed run holds.

Stopping: Tune ends a stopped trial's actor ~0.1 s after calling its stop(). The Train controller,
owned by the trial, dies with it; the worker-group placement group the controller created does not
(Ray ties it to the job, and Ray Train's PlacementGroupCleaner needs the state API, i.e. a dashboard,
which a local sweep does not start), so the next trial's workers would never fit. The driver ends the
Train run first: `StopTrainRuns.on_trial_complete` runs before Tune stops the trial, removes the run's
placement group (which kills its workers; Train then fails the run and shuts its controller down in
order, its cleaner included) and waits until the trial's `fit()` has returned.

Failing: a Train run that lost a node fails its trial, and Tune retries the trial. If the node held
the trial (and so the run's controller, which Ray places on the trial's node), nothing of Ray Train
is left to remove the run's group; `StopTrainRuns.on_trial_recover` removes it before the retry is
scheduled, so the retry fits in the capacity the cluster had. Ray Train's own cleaner frees the group
too, but only once it has registered it, after the worker group is up; a node lost before that, or
before any rank posted the group here, leaves it reserved until the job ends: then the driver finds
it among the groups whose workers are all dead (`orphaned_worker_groups`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import ray
from ray.tune import Callback
from ray.util.placement_group import PlacementGroup, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)

# How long the driver waits for a stopped Train run to end before Tune stops its trial (its placement
# group is gone by then either way; the wait lets the controller shut down in order). Measured: ~1 s.
STOP_TIMEOUT_S = 60.0


class _Run:
    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []  # ("nodes", [node ids]) | ("report", progress report)
        self.changed = asyncio.Event()
        self.ended = asyncio.Event()  # the trial's fit() returned or raised
        self.placement_group = None

    def add(self, item: tuple[str, Any]) -> None:
        self.items.append(item)
        self.changed.set()


@ray.remote(num_cpus=0)
class TrainRuns:
    """The sweep's Ray Train runs, one entry per attempt of a trial: rank 0 posts the run's placement
    group, worker nodes and progress reports; the trial takes them; the driver stops a run whose
    trial a scheduler stopped. Owned by the driver, so it outlives every trial."""

    def __init__(self) -> None:
        self.runs: dict[str, _Run] = {}
        self.current: dict[str, str] = {}  # trial id -> the key of its latest run
        self.closed: set[str] = set()  # runs stopped or released: a group posted late is removed on arrival

    async def open(self, trial_id: str) -> str:
        key = f"{trial_id}/{uuid.uuid4().hex[:8]}"
        self.runs[key] = _Run()
        self.current[trial_id] = key
        return key

    async def placed(self, key: str, placement_group) -> None:
        """Every rank posts its run's placement group as its first act, so the driver knows it even
        when a node dies before rank 0 gets far (the first post wins; they are all the same group)."""
        if key in self.closed:  # stopped, or its trial failed, before its workers were up
            with contextlib.suppress(Exception):  # another rank's post removed it already
                remove_placement_group(placement_group)
            return
        run = self.runs.get(key)
        if run is not None and run.placement_group is None:
            run.placement_group = placement_group

    async def started(self, key: str, nodes: list[str]) -> None:
        if key in self.runs:
            self.runs[key].add(("nodes", nodes))

    async def put(self, key: str, report: dict[str, Any]) -> None:
        if key in self.runs:
            self.runs[key].add(("report", report))

    async def take(self, key: str, timeout: float) -> tuple[list[tuple[str, Any]], bool]:
        """What arrived since the last take (waiting up to `timeout` for something), and whether the
        run has ended (then nothing more comes: rank 0 flushes before its training function returns)."""
        run = self.runs.get(key)
        if run is None:
            return [], True
        if not run.items and not run.ended.is_set():
            run.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.changed.wait(), timeout)
        items, run.items = run.items, []
        return items, run.ended.is_set()

    async def ended(self, key: str) -> None:
        run = self.runs.get(key)
        if run is not None:
            run.ended.set()
            run.changed.set()

    async def stop(self, key: str, timeout: float) -> str:
        """End the run if it is still going: remove its placement group (its workers die with it)
        and wait for its trial's fit() to return. 'ended' (nothing to do), 'stopped' or 'timeout'."""
        run = self.runs.get(key)
        if run is None or run.ended.is_set():
            self._forget(key)
            return "ended"
        self.closed.add(key)  # a group posted from now on is removed on arrival
        if run.placement_group is not None:
            remove_placement_group(run.placement_group)
        try:
            await asyncio.wait_for(run.ended.wait(), timeout)
            outcome = "stopped"
        except TimeoutError:
            outcome = "timeout"
        self._forget(key)
        return outcome

    async def stop_trial(self, trial_id: str, timeout: float) -> str:
        key = self.current.get(trial_id)
        return await self.stop(key, timeout) if key else "ended"

    async def release_trial(self, trial_id: str) -> bool:
        """A trial failed (and may be retried): free what its Train run holds, without waiting, so a
        retry on a cluster at its full size fits even when nothing of Ray Train survived to free it
        (module docstring). True if a placement group was removed."""
        key = self.current.get(trial_id)
        run = self.runs.get(key) if key else None
        if run is None:
            return False
        groups = [run.placement_group] if run.placement_group is not None else []
        if not groups:  # no rank got as far as posting it: look for it among the groups left behind
            groups = [PlacementGroup(ray.PlacementGroupID.from_hex(pg))
                      for pg in await asyncio.to_thread(orphaned_worker_groups)]
        for group in groups:
            with contextlib.suppress(Exception):  # already removed by its controller
                remove_placement_group(group)
        self._forget(key)
        return bool(groups)

    def _forget(self, key: str) -> None:
        self.closed.add(key)
        self.runs.pop(key, None)
        trial_id = key.split("/", 1)[0]
        if self.current.get(trial_id) == key:
            del self.current[trial_id]


def orphaned_worker_groups() -> list[str]:
    """Ids of the placement groups that held Ray Train workers, every one of them dead now, and that
    nothing removed: what a run leaves behind when its node dies after the group was reserved and its
    workers created but before any rank's first act (so no rank posted the group, and Ray Train's own
    cleaner, which registers it only once the worker group is up, does not know it either); under
    load that start takes tens of seconds (the likely cause of one CI failure, not reproduced here).
    A group whose workers are starting or alive, or that
    holds no worker yet, is not touched. Needs Ray's public state API, i.e. a dashboard: every cluster
    has one; without it (a local sweep, which loses no node) this finds nothing."""
    from ray.util.state import list_actors, list_placement_groups

    try:
        # the cluster this process is connected to (left to itself, the state API looks for "a" local
        # Ray and refuses when several run on the machine)
        address = ray.get_runtime_context().gcs_address
        # detail=True: an actor's placement group and a group's `is_detached` are detail fields
        kept = {g.placement_group_id for g in list_placement_groups(
            address=address, filters=[("state", "!=", "REMOVED")], limit=10_000, detail=True,
            raise_on_missing_output=False)
            if not g.is_detached}
        workers = list_actors(address=address, filters=[("class_name", "=", WORKER_CLASS)], limit=10_000,
                              detail=True, raise_on_missing_output=False)
    except Exception as e:  # noqa: BLE001 - no state API here: nothing to find
        log.info("no Ray state API to look for orphaned Train groups: %s", e)
        return []
    states: dict[str, set[str]] = {}
    for actor in workers:
        if actor.placement_group_id in kept:
            states.setdefault(actor.placement_group_id, set()).add(actor.state)
    return sorted(pg for pg, seen in states.items() if seen == {"DEAD"})


WORKER_CLASS = "RayTrainWorker"  # Ray Train's worker actor (tests/test_train_capacity.py pins the name)


def train_runs():
    """A `TrainRuns` on the driver's node (where the driver's own death ends it anyway)."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return TrainRuns.options(scheduling_strategy=here).remote()


class StopTrainRuns(Callback):
    """In the driver: a trial that ends leaves no Train run behind. Tune calls on_trial_complete
    before it stops the trial's actor, which is what lets the run end in order (module docstring)."""

    def __init__(self, runs, timeout_s: float = STOP_TIMEOUT_S):
        self.runs, self.timeout_s = runs, timeout_s

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        outcome = ray.get(self.runs.stop_trial.remote(trial.trial_id, self.timeout_s))
        if outcome == "timeout":
            log.warning("the Ray Train run of stopped trial %s did not end within %.0f s", trial.trial_id,
                        self.timeout_s)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        # Tune calls this before it schedules the retry: the failed run's group is gone by then
        ray.get(self.runs.release_trial.remote(trial.trial_id))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        ray.get(self.runs.release_trial.remote(trial.trial_id))
