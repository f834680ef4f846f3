"""Shared set-up for the benchmarks: the CPU-scale experiment's data and model."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wrapperdist.config import ExperimentConfig, load_config  # noqa: E402


def cpu_config(path: str | None = None) -> ExperimentConfig:
    return load_config(path or ROOT / "experiments" / "cpu_small.yaml")


def rate(fn, min_seconds: float = 3.0) -> tuple[float, int]:
    """Calls per second of `fn` over at least `min_seconds` (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start), calls
