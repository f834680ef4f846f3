"""Executors: run a plan's phases — pretrain, fine-tune (grid or Optuna search), then analysis and
reFT. `LocalExecutor` runs in this process (`--local`: no Ray, breakpoints work); `RayExecutor`
(ray_executor.py) runs Ray Tune trials. Both satisfy `Executor`, call the same `run_node`, and feed
the same recorder, which is the only MLflow writer."""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from wrapperdist.config import ConfigError, ExperimentConfig
from wrapperdist.setting import Runtime, default_threads
from wrapperdist.store import Store
from wrapperdist.sweep.cluster import TRAIN_TRIAL_CPU, TRAIN_WORKER_CPU
from wrapperdist.sweep.plan import Node, Plan, downstream_nodes, finetune_node, unique
from wrapperdist.sweep.recorder import SweepRecorder
from wrapperdist.sweep.spec import SearchConfig, Sweep
from wrapperdist.sweep.study import open_study, searched_config
from wrapperdist.sweep.trials import NodeOutcome, run_node

log = logging.getLogger(__name__)


class DeviceUnavailable(ConfigError):
    """`resources.device: cuda` where no CUDA device exists: refused before anything runs."""


def resolve_device(requested: str, gpus: int) -> str:
    """`resources.device` ('cpu', 'cuda', 'auto') as run, given the GPUs there are."""
    if requested == "cpu" or (requested == "auto" and gpus == 0):
        return "cpu"
    if gpus == 0:
        raise DeviceUnavailable("resources.device: cuda, but there is no CUDA device here (no GPU on this "
                                "machine or Ray cluster); use device: cpu, or auto to take a GPU only where one exists")
    return "cuda"


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


@dataclass(frozen=True)
class Layout:
    """How trials share the machine: concurrency × threads per trial never exceeds the CPUs, except
    for a phase's odd last round (`for_phase`), where single-thread trials share the cores. On cuda,
    in-process training trials also share the GPUs (`gpus_per_trial` each); analyses stay on the CPU."""

    cpus: int
    threads_per_trial: int
    max_concurrent: int
    train_workers: int
    device: str = "cpu"  # resolved: "cpu" or "cuda"
    cpus_per_trial: float | None = None  # what a trial asks Ray for; None: its threads
    gpus_per_trial: float = 0.0  # what an in-process training trial asks Ray for, on cuda
    worker_start_timeout_s: float = 1200.0  # a Ray Train run's wait for its workers (resources.*)

    @property
    def use_gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def cpu_request(self) -> float:
        return self.cpus_per_trial or self.threads_per_trial

    def request(self, kind: str) -> dict[str, float]:
        """What a Tune trial of a `kind` node asks Ray for. A Ray Train trial takes 0.01 CPU: its
        workers ask for the rest. Analyses never take a GPU (they run on the CPU)."""
        if self.train_workers and kind != "analysis":
            return {"cpu": TRAIN_TRIAL_CPU}
        request = {"cpu": self.cpu_request}
        if self.use_gpu and not self.train_workers and kind != "analysis":
            request["gpu"] = self.gpus_per_trial
        return request

    def for_phase(self, n_nodes: int) -> Layout:
        """A phase with fewer nodes than slots gives each trial more threads (1 pretrain on 2 CPUs
        runs with 2 threads, not 1 thread and an idle core). A phase of single-thread trials that
        is a little larger than the slots (3 analyses on 2 cores) runs them all at once on a share
        of the cores each: in rounds, its last round would leave a core idle for a whole trial."""
        if self.train_workers or n_nodes == 0:
            return self
        if n_nodes < self.max_concurrent:
            threads = max(self.threads_per_trial, self.cpus // n_nodes)
            return replace(self, threads_per_trial=threads, max_concurrent=n_nodes)
        if (self.threads_per_trial == 1 and not self.use_gpu
                and self.max_concurrent < n_nodes < 2 * self.max_concurrent):
            # rounded down: Ray counts resources in 1e-4 units, and 3 × 0.6667 would not fit on 2 CPUs
            share = math.floor(self.cpus / n_nodes * 1000) / 1000
            return replace(self, max_concurrent=n_nodes, cpus_per_trial=share)
        return self

    def runtime(self, kind: str = "pretrain") -> Runtime:
        """What an in-process trial of a `kind` node runs with: its thread share, its device (the
        CPU for analyses; Ray Train places its own workers), no progress bars (many at once)."""
        device = self.device if kind != "analysis" and not self.train_workers else "cpu"
        return Runtime(threads=self.threads_per_trial, progress=False, device=device)

    def summary(self) -> str:
        if self.train_workers:
            return (f"{self.max_concurrent} concurrent trial(s), each a Ray Train run of {self.train_workers} DDP "
                    f"worker(s) × 1 torch thread{' + 1 GPU' if self.use_gpu else ''} on {self.cpus} CPUs")
        gpu = f", training on cuda with {self.gpus_per_trial:g} GPU each" if self.use_gpu else ""
        return (f"{self.max_concurrent} concurrent trial(s) × {self.threads_per_trial} torch thread(s) "
                f"on {self.cpus} CPUs{gpu}")


def layout_for(sweep: Sweep, cpus: int | None = None, gpus: int | None = None) -> Layout:
    """`cpus`/`gpus`: what the Ray cluster has (default: resources.cpus, else this machine).
    Raises DeviceUnavailable for `device: cuda` without a GPU."""
    r = sweep.spec.resources
    cpus = r.cpus or cpus or default_threads()
    gpus = local_gpus() if gpus is None and r.device != "cpu" else (gpus or 0)
    device = resolve_device(r.device, gpus)
    if r.train_workers:
        if device == "cuda":
            fits = max(1, gpus // r.train_workers)
        else:
            fits = max(1, math.floor(cpus / (TRAIN_TRIAL_CPU + TRAIN_WORKER_CPU * r.train_workers)))
        return Layout(cpus, 1, min(r.max_concurrent_trials or fits, fits), r.train_workers, device,
                      worker_start_timeout_s=r.worker_start_timeout_s)
    threads = min(r.cpus_per_trial, cpus)
    fits = max(1, cpus // threads)
    max_concurrent = min(r.max_concurrent_trials or fits, fits)
    if device == "cpu":
        return Layout(cpus, threads, max_concurrent, 0)
    share = r.gpus_per_trial or math.floor(gpus / max_concurrent * 1000) / 1000  # Ray counts in 1e-4 units
    max_concurrent = min(max_concurrent, max(1, math.floor(gpus / share + 1e-9)))
    return Layout(cpus, threads, max_concurrent, 0, device, gpus_per_trial=share)


class Executor(Protocol):
    recorder: SweepRecorder

    def run_nodes(self, nodes: list[Node], phase: str) -> list[NodeOutcome]:
        """Run every node of one phase (their inputs exist); return those that finished."""

    def search(self, base: ExperimentConfig, search: SearchConfig, phase: str, study: StudyRef) -> list[NodeOutcome]:
        """An Optuna search over fine-tunes of `base` in `study`; return the finished ones (this
        attempt's and, on resume, the earlier attempts')."""


class LocalExecutor:
    """Runs every node in this process, one after another. Retries per resources.max_failures."""

    def __init__(self, sweep: Sweep, store: Store, recorder: SweepRecorder, layout: Layout):
        self.sweep, self.store, self.recorder, self.layout = sweep, store, recorder, layout

    def _run(self, node: Node) -> NodeOutcome | None:
        error = ""
        for attempt in range(self.sweep.spec.resources.max_failures + 1):
            try:
                return run_node(node, self.store, self.recorder.handle, self.layout.runtime(node.kind))
            except Exception:  # noqa: BLE001 - recorded as FAILED; the sweep goes on
                error = traceback.format_exc()
                log.warning("node %s failed (attempt %d):\n%s", node.key, attempt + 1, error)
        self.recorder.fail(node, error)
        return None

    def run_nodes(self, nodes: list[Node], phase: str) -> list[NodeOutcome]:
        return [o for o in (self._run(n) for n in nodes) if o is not None]

    def search(self, base: ExperimentConfig, search: SearchConfig, phase: str, study: StudyRef) -> list[NodeOutcome]:
        """Optuna's own ask/tell loop in-process (a spec with ASHA is refused for --local: driver.refuse_unrunnable)."""
        import optuna  # an optional dependency (the `ray` extra), needed only by searched sweeps

        opened = open_study(study.url, study.name, search, base, self.store, self.recorder.handle)
        opened.study.sampler = optuna.samplers.TPESampler(seed=opened.sampler_seed)
        distributions = {k: _optuna_distribution(d) for k, d in search.space.items()}
        outcomes = list(opened.previous)
        for _ in range(opened.remaining):
            trial = opened.study.ask(distributions)
            config = searched_config(base, trial.params, f"{base.name} #{trial.number}")
            outcome = self._run(finetune_node(config))
            if outcome is None or search.metric not in outcome.metrics:
                opened.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            opened.study.tell(trial, outcome.metrics[search.metric])
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


@dataclass(frozen=True)
class StudyRef:
    """Where an Optuna search keeps its study (see study.py)."""

    url: str
    name: str


PhaseListener = Callable[[str, "list[Node] | int"], None]


def execute(plan: Plan, sweep: Sweep, runner: Executor, progress: Callable[[str], None] = print,
            on_phase: PhaseListener | None = None, studies: Callable[[int], StudyRef] | None = None) -> dict[str, int]:
    """Phases in order; a node whose inputs failed fails too (recorded), the others go on.
    `on_phase(name, nodes)` hears each phase begin (live progress); `studies(i)` names grid
    point i's Optuna study (searched sweeps)."""

    def phase(nodes: list[Node], name: str) -> list[NodeOutcome]:
        progress(f"phase {name}: {len(nodes)} node(s)")
        if on_phase:
            on_phase(name, nodes)
        runnable = []
        for node in nodes:
            failed_inputs = [k for k in (node.parent, *node.requires) if k in runner.recorder.failed]
            if failed_inputs:  # no trial for it: it would only find its input missing from the store
                runner.recorder.fail(node, f"not run: its input {', '.join(failed_inputs)} failed in this "
                                           "sweep; `wrapperdist sweep --resume` runs both")
            else:
                runnable.append(node)
        return runner.run_nodes(runnable, name)

    done_pre = phase(plan.pretrain, "pretrain")
    search = sweep.spec.search
    if search:
        finetuned: list[NodeOutcome] = []
        for i, point in enumerate(sweep.points):
            progress(f"phase finetune (search {i + 1}/{len(sweep.points)}): {search.num_samples} trial(s)")
            if on_phase:
                on_phase(f"finetune search {i + 1}/{len(sweep.points)}", search.num_samples)
            if studies is None:
                raise ValueError("a searched sweep needs an Optuna storage (studies=)")
            finetuned += runner.search(point, search, f"finetune-search-{i}", studies(i))
        downstream = unique([n for o in finetuned
                             for n in downstream_nodes(o.node.config, sweep.spec.revival_budgets, sweep.spec.analyze)])
    else:
        finetuned = phase(plan.finetune, "finetune")
        downstream = plan.downstream
    done_down = phase(downstream, "analysis")
    return {"pretrain": len(done_pre), "finetune": len(finetuned), "downstream": len(done_down),
            "failed": len(runner.recorder.failed)}
