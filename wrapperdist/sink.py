"""Where stages send what they measure. The training loop and the stages only know this protocol;
the MLflow writer, a Ray reporter or an in-memory list are interchangeable behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Sink(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_figure(self, figure: Any, name: str) -> None: ...


class MemorySink:
    """Keeps everything in lists: for tests, benchmarks and in-process debugging."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.params: dict[str, Any] = {}
        self.artifacts: list[tuple[Path, str | None]] = []
        self.figures: dict[str, Any] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def log_figure(self, figure: Any, name: str) -> None:
        self.figures[name] = figure

    def history(self, key: str) -> list[tuple[int, float]]:
        return [(step, m[key]) for step, m in self.metrics if key in m]


class TeeSink:
    """Sends everything to several sinks (e.g. MLflow and memory, to plot the curves afterwards)."""

    def __init__(self, *sinks: Sink):
        self.sinks = sinks

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for s in self.sinks:
            s.log_metrics(metrics, step)

    def log_params(self, params: dict[str, Any]) -> None:
        for s in self.sinks:
            s.log_params(params)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        for s in self.sinks:
            s.log_artifact(path, artifact_path)

    def log_figure(self, figure: Any, name: str) -> None:
        for s in self.sinks:
            s.log_figure(figure, name)


class PrefixSink:
    """Prefixes metric and figure names, so several sub-analyses can share one run."""

    def __init__(self, sink: Sink, prefix: str):
        self.sink, self.prefix = sink, prefix

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.sink.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, step)

    def log_params(self, params: dict[str, Any]) -> None:
        self.sink.log_params({f"{self.prefix}{k}": v for k, v in params.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.sink.log_artifact(path, artifact_path)

    def log_figure(self, figure: Any, name: str) -> None:
        self.sink.log_figure(figure, name)
