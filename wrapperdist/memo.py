"""A disk memo for analyses' shared references: results that are a pure function of (weights, config)
and that several analyses of one sweep would otherwise recompute — the TinyStories per-seed
references, the PCFG/Tracr control reFT curves. One analysis computes them and the others (other
Ray trial processes) read them back. A file lock makes a concurrent second analysis
wait rather than compute the same thing twice."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

T = TypeVar("T")
CACHE_ENV = "WRAPPERDIST_CACHE"  # where the memo lives; default: <tmp>/wrapperdist-cache


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "wrapperdist-cache")


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def memoised(kind: str, key: dict[str, Any], compute: Callable[[], T]) -> T:
    """compute(), or its JSON-able result stored under `kind` and the hash of `key`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{digest}.json"
    with open(folder / f"{kind}-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return json.loads(path.read_text())
        value = compute()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)
        return value

