"""Live sweep progress: one tqdm bar per phase with finished / running / failed / cached counts, the
elapsed time and an ETA, then a summary table naming every failed trial.

It listens to the recorder, which sees every trial event in the driver under `--local` and under
Ray alike, so both show the same thing. On a terminal the bar redraws in place; otherwise (a log
file, CI) it writes one line per finished or failed trial, and between them at most one line a
minute while trials report, so a long phase still shows its ETA without flooding the log.

The ETA is ours, tqdm only draws it: tqdm's own estimate divides finished trials by elapsed time,
which cached trials (instant) skew and which says nothing until the first trial ends. Here work is
counted in trial fractions — a running trial that reported step 200 of 400 is half done — over the
trials that really run, so an estimate exists from the first evaluation report on."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from tqdm import tqdm

from wrapperdist.sweep.plan import Node


def expected_steps(kind: str, experiment: dict[str, Any], budget: int = 0) -> int:
    """Optimisation steps a node runs (0: unknown, e.g. an analysis or a compiled pretraining)."""
    if kind == "reft":
        return int(budget or 0)
    section = {"pretrain": "pretrain", "finetune": "finetune"}.get(kind)
    optim = ((experiment.get(section) or {}).get("optim") or {}) if section else {}
    return int(optim.get("steps") or 0)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def error_line(error: str, width: int = 300) -> str:
    """A traceback's last line, the exception's module path dropped ("TrainCapacityError: no room
    …", not "wrapperdist.sweep.ray_train.TrainCapacityError: …"): what a summary line has room for."""
    last = next((x for x in reversed(error.strip().splitlines()) if x.strip()), "no error text").strip()
    return re.sub(r"^(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*: )", "", last)[:width]


@dataclass
class Phase:
    name: str
    total: int
    start: float
    steps: dict[str, int] = field(default_factory=dict)  # key -> expected steps
    running: dict[str, float] = field(default_factory=dict)  # key -> fraction done
    finished: dict[str, str] = field(default_factory=dict)  # key -> name (trained here)
    cached: set[str] = field(default_factory=set)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (name, error)
    end: float | None = None

    def done(self) -> int:
        return len(self.finished) + len(self.cached) + len(self.failed)

    def eta(self, now: float) -> float | None:
        """Seconds left: the trials still to run, at the rate work has been done so far."""
        work = len(self.finished) + len(self.failed) + sum(self.running.values())
        left = max(0.0, self.total - len(self.cached) - work)
        if left == 0:
            return 0.0
        if work <= 0 or now <= self.start:
            return None
        return left * (now - self.start) / work

    def counts(self) -> str:
        return (f"done {len(self.finished)}, running {len(self.running)}, failed {len(self.failed)}, "
                f"cached {len(self.cached)}")


class SweepProgress:
    """Recorder listener (see `SweepRecorder.listeners`) plus phase boundaries from `execute`."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, refresh_s: float = 1.0, heartbeat_s: float = 60.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock, self.refresh_s, self.heartbeat_s = clock, refresh_s, heartbeat_s
        self._last_line = float("-inf")
        self.phases: list[Phase] = []
        self.bar: tqdm | None = None
        self.lock = threading.RLock()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks (and with them the recorder and its listeners) into the
        experiment state; a copy needs the counts only, not the lock, thread, bar or stream."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("lock", "bar", "_ticker", "_stop", "stream")}
        return {**state, "clock": time.monotonic}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, stream=sys.stderr, bar=None, lock=threading.RLock(), _ticker=None,
                             _stop=threading.Event())

    # -- phases ---------------------------------------------------------------------------------
    def phase(self, name: str, nodes: list[Node] | int) -> None:
        """A phase begins: `nodes` (or just how many trials, for a search)."""
        with self.lock:
            self._end_phase()
            total = nodes if isinstance(nodes, int) else len(nodes)
            current = Phase(name, total, self.clock())
            if not isinstance(nodes, int):
                for n in nodes:
                    current.steps[n.key] = expected_steps(n.kind, n.config.model_dump(mode="json"), n.budget or 0)
            self.phases.append(current)
            if self.tty:
                self.bar = tqdm(total=total, desc=name, file=self.stream, dynamic_ncols=True, leave=True,
                                bar_format="{desc}: {bar} {postfix}")
                self._draw()
            else:
                self._line(f"{total} trial(s)")
            self._start_ticker()

    def _end_phase(self) -> None:
        if self.phases and self.phases[-1].end is None:
            self.phases[-1].end = self.clock()
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self.bar is not None:
            self._draw()
            self.bar.close()
            self.bar = None

    def _start_ticker(self) -> None:
        """Redraw once a second so elapsed time and ETA move between trial reports; in a log file, a
        heartbeat line when a minute passed without one (an analysis reports nothing until it ends)."""
        self._stop = threading.Event()

        def ticks() -> None:
            while not self._stop.wait(self.refresh_s):
                self.tick()

        self._ticker = threading.Thread(target=ticks, name="sweep-progress", daemon=True)
        self._ticker.start()

    def tick(self) -> None:
        """One redraw (and heartbeat, when due): what the ticker thread does every `refresh_s`."""
        with self.lock:
            self._draw()
            self._heartbeat()

    # -- events ---------------------------------------------------------------------------------
    def __call__(self, event: str, key: str, result: dict[str, Any]) -> None:
        """One trial event: start / progress / done (result['cached'] set when reused) / fail / stopped."""
        with self.lock:
            if not self.phases or self.phases[-1].end is not None:
                return
            p = self.phases[-1]
            if key not in p.steps and result.get("node_experiment"):
                experiment = json.loads(result["node_experiment"])
                p.steps[key] = expected_steps(result.get("node_kind", ""), experiment, result.get("node_budget", 0))
            if event in ("start", "progress") and key not in p.finished and key not in p.cached:
                steps = p.steps.get(key, 0)
                fraction = min(1.0, int(result.get("step", 0)) / steps) if steps else 0.0
                p.running[key] = max(p.running.get(key, 0.0), fraction)
                self._heartbeat()
            elif event in ("done", "fail", "stopped"):
                p.running.pop(key, None)
                name = result.get("node_name", key)
                if event == "fail":
                    p.failed[key] = (name, str(result.get("error", "")))
                elif event == "done" and result.get("cached"):
                    p.cached.add(key)
                else:
                    p.finished[key] = name
                if not self.tty:
                    status = {"fail": "FAILED", "stopped": "stopped early"}.get(event, "cached" if key in p.cached
                                                                                   else "finished")
                    self._line(f"{status}: {name}" + (f": {error_line(p.failed[key][1])}" if event == "fail" else ""))
            self._draw()

    # -- output ---------------------------------------------------------------------------------
    def _status(self, p: Phase) -> str:
        now = self.clock()
        return f"{p.done()}/{p.total} | {p.counts()} | elapsed {_clock(now - p.start)}, ETA {_clock(p.eta(now))}"

    def _draw(self) -> None:
        if self.bar is None or not self.phases:
            return
        p = self.phases[-1]
        self.bar.n = p.done()
        self.bar.set_postfix_str(self._status(p), refresh=False)
        self.bar.refresh()

    def _heartbeat(self) -> None:
        if not self.tty and self.phases and self.phases[-1].end is None \
                and self.clock() - self._last_line >= self.heartbeat_s:
            self._line("running")

    def _line(self, what: str) -> None:
        p = self.phases[-1]
        self._last_line = self.clock()
        print(f"[{p.name}] {what} | {self._status(p)}", file=self.stream, flush=True)

    def close(self) -> str:
        """End the last phase; return the summary table (and every failed trial with its error)."""
        with self.lock:
            self._end_phase()
        rows = [("phase", "trials", "finished", "cached", "failed", "time")]
        for p in self.phases:
            rows.append((p.name, str(p.total), str(len(p.finished)), str(len(p.cached)), str(len(p.failed)),
                         _clock((p.end or self.clock()) - p.start)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        failed = [(p.name, name, error) for p in self.phases for name, error in p.failed.values()]
        if failed:
            lines.append(f"failed trials ({len(failed)}):")
            for phase, name, error in failed:
                lines.append(f"  [{phase}] {name}: {error_line(error)}")
        return "\n".join(lines)
