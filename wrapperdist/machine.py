"""What a stage ran on, for its MLflow run: CPU model, the CPU kernels torch dispatches to, BLAS,
device and torch version. CPU training is bit-identical on one machine type but not across CPU
types (MKL and oneDNN take other kernels), so a number's machine travels with it."""

from __future__ import annotations

import functools
import platform
import re
from pathlib import Path

import torch


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def blas() -> str:
    """The BLAS torch was built with (e.g. mkl, openblas), from its build configuration."""
    found = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


def machine_info(device: str = "cpu") -> dict[str, str]:
    info = {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "blas": blas(),
            "device": device, "torch": torch.__version__}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
