"""Running one node: the same function serves a Ray Tune trial and the in-process executor. It
knows no Ray and no MLflow: it reads inputs from the store, runs a stage, writes outputs to the store,
and tells `report` what happened (the caller routes that to Tune or straight to the recorder)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from wrapperdist.machine import machine_info
from wrapperdist.memo import Memo
from wrapperdist.models import load_model
from wrapperdist.plots import training_curves
from wrapperdist.setting import AnalysisModels, Runtime
from wrapperdist.settings.registry import setting_for
from wrapperdist.sink import MemorySink
from wrapperdist.stages import run_stage
from wrapperdist.store import Store, remove, scratch_dir, write_stage_outputs
from wrapperdist.sweep.cluster import WHERE
from wrapperdist.sweep.plan import Node, node_report, with_metrics

Report = Callable[[dict[str, Any]], None]
# A training backend runs a pretrain/finetune/reft node; in-process by default, Ray Train when the
# sweep asks for workers. It returns (final metrics, history) and leaves model.pt in out_dir.
TrainBackend = Callable[[Node, Path | None, Path], tuple[dict[str, float], list]]


class StageFailed(RuntimeError):
    """A node could not run (e.g. its input stage failed); the sweep records it and goes on."""


class ReportingSink(MemorySink):
    """Keeps the history and forwards evaluation points (the setting's eval metrics) as they happen:
    live curves in MLflow and the metric ASHA needs. Training-loss points stay in the history only:
    replayed at the end."""

    def __init__(self, node: Node, report: Report, eval_keys: Collection[str]):
        super().__init__()
        self.node, self.report, self.eval_keys = node, report, set(eval_keys)
        self.sent = 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        if self.eval_keys & metrics.keys():
            # the first report carries the config, in case no 'start' report announced the node
            identity = node_report(self.node, with_config=self.sent == 0)
            self.report(with_metrics({**identity, "event": "progress", "step": step}, metrics))
            self.sent += 1


def in_process_backend(report: Report, runtime: Runtime) -> TrainBackend:
    def run(node: Node, init: Path | None, out_dir: Path):
        setting = setting_for(node.config)
        sink = ReportingSink(node, report, setting.eval_metrics)
        metrics = run_stage(node.kind, setting, node.config, init, out_dir, sink, runtime, node.budget)
        return metrics, sink.metrics

    return run


@dataclass
class NodeOutcome:
    node: Node
    cached: bool
    metrics: dict[str, float] = field(default_factory=dict)


def run_node(node: Node, store: Store, report: Report, runtime: Runtime, backend: TrainBackend | None = None,
             announce: bool = True) -> NodeOutcome:
    """Produce `node`'s output in the store unless it is there already (reuse and resume).
    `announce=False` skips the metric-less 'start' report (a searcher wants its metric in every one).
    Every report also says what machine ran the stage (tagged on its run: see machine.py)."""
    report = _with_machine(report, runtime.device)
    if store.done(node.key):
        metrics = store.read_json(node.key, "metrics.json")
        report(with_metrics({**node_report(node, True), "event": "done", "cached": 1}, metrics))
        return NodeOutcome(node, True, metrics)
    if announce:
        report({**node_report(node, True), "event": "start", "runtime_threads": runtime.threads or 0})
    for key in (node.parent, *node.requires):
        if key and not store.done(key):
            raise StageFailed(f"{node.kind} {node.key} needs {key}, which is not in the store (did it fail?)")
    work = scratch_dir(node.kind)
    try:
        if node.kind == "analysis":
            metrics = _analysis(node, store, work, runtime)
        else:
            init = store.fetch(node.parent, work / "init") / "model.pt" if node.parent else None
            # A pretraining that is not training (Tracr compiles) never needs Ray Train's workers.
            compiles = node.kind == "pretrain" and not node.config.setting.trains_pretraining
            run = in_process_backend(report, runtime) if compiles or backend is None else backend
            metrics, history = run(node, init, work / "out")
            write_stage_outputs(work / "out", metrics, history)
            _curves_figure(history, node, work / "out")
        store.put(node.key, work / "out")
        done = {**node_report(node, True), "event": "done", "cached": 0, "runtime_threads": runtime.threads or 0}
        report(with_metrics(done, metrics))
        return NodeOutcome(node, False, metrics)
    finally:
        remove(work)


def _with_machine(report: Report, device: str) -> Report:
    where = {f"{WHERE}{k}": v for k, v in machine_info(device).items()}
    return lambda result: report({**result, **where})


def _analysis(node: Node, store: Store, work: Path, runtime: Runtime) -> dict[str, float]:
    pretrained_key, control_key = node.requires
    models = AnalysisModels(*(load_model(store.fetch(key, work / key) / "model.pt")[0]
                              for key in (pretrained_key, node.parent, control_key)))
    sink = MemorySink()
    # the references analyses share (control reFT curves, per-seed references) live in the store
    output = setting_for(node.config).analyze(node.config, models, sink, replace(runtime, memo=Memo(store)))
    out = work / "out"
    out.mkdir(parents=True)
    (out / "report.md").write_text(output.report)
    for name, fig in output.figures.items():
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)  # a sweep makes many: keep pyplot's registry from growing
    metrics = output.summary_metrics()
    (out / "verdict.json").write_text(json.dumps({"label": output.label}))
    write_stage_outputs(out, metrics, sink.metrics)
    return metrics


def _curves_figure(history: list, node: Node, out_dir: Path) -> None:
    memory = MemorySink()
    memory.metrics = [(step, m) for step, m in history]
    fig = training_curves(memory, node.name, setting_for(node.config).eval_metrics)
    fig.savefig(out_dir / "curves.png", dpi=100)
    plt.close(fig)
