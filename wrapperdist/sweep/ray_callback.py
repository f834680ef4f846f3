"""The Tune side of the recorder: a driver-side LoggerCallback that hands every trial result and
every trial failure to the SweepRecorder (so the driver stays the only MLflow writer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.logger import LoggerCallback

from wrapperdist.sweep.plan import Node
from wrapperdist.sweep.recorder import SweepRecorder

NodeOfTrial = Callable[[dict[str, Any], str], Node]


class MLflowTreeCallback(LoggerCallback):
    def __init__(self, recorder: SweepRecorder, node_of_trial: NodeOfTrial):
        self.recorder, self.node_of_trial = recorder, node_of_trial

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if "node_key" in result:
            self.recorder.handle(result, trial.trial_id)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        if not failed:
            self.recorder.stopped(trial.trial_id)  # no-op unless a scheduler ended it early
            return
        try:
            node = self.node_of_trial(trial.config, trial.trial_id)
        except Exception:  # noqa: BLE001 - an unusable config: fall back to the trial id
            node = None
        error = None  # the recorder falls back to the traceback the trial reported itself
        try:
            exc = trial.get_error()
            if exc is not None:
                error = str(exc)
        except Exception:  # noqa: BLE001 - the error text is a nicety
            pass
        self.recorder.fail(node, error, trial.trial_id)
