"""A memo for analyses' shared references: results that are a pure function of (weights, config, code)
and that several analyses of one sweep would otherwise recompute — the TinyStories per-seed
references, the PCFG/Tracr control reFT curves.

It lives in the sweep's content-addressed stage store (`memo-<kind>-<hash>` entries beside the
stage outputs), so on a cluster it sits on the shared `storage_path` like every other stage output
and a memo written on one node is read on another. Its key holds the code version (a digest of the
package's source), so a change to the code that computes a value never replays an old one.

Every call returns the same type: the JSON round trip of the value (tuples come back as lists, on
the first call as on later ones). A local file lock keeps two analyses of one machine from computing
the same value at once; across machines two may both compute it, and the first to store it wins
(the values are equal: the same pure function of the same inputs)."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from wrapperdist.store import Store, remove, scratch_dir

VALUE_FILE = "value.json"


def source_digest(root: Path) -> str:
    """A digest of every module under `root`, by relative path and content."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def code_version() -> str:
    """This package's source digest: any change to the code invalidates the memo. Coarser than
    the code a value depends on (an edit elsewhere recomputes it too), but never stale."""
    return source_digest(Path(__file__).resolve().parent)


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _json_round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value))


class Memo:
    """Memoised values in `store` (the sweep's stage store)."""

    def __init__(self, store: Store):
        self.store = store

    def key(self, kind: str, key: dict[str, Any]) -> str:
        ident = json.dumps({"key": key, "code": code_version()}, sort_keys=True, default=str)
        return f"memo-{kind}-{hashlib.sha256(ident.encode()).hexdigest()[:24]}"

    def __call__(self, kind: str, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """compute()'s JSON round trip, stored under `kind` and the hash of `key` and the code version."""
        entry = self.key(kind, key)
        lock_path = Path(tempfile.gettempdir()) / "wrapperdist-memo-locks" / f"{entry}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.store.done(entry):
                return self.store.read_json(entry, VALUE_FILE)
            value = _json_round_trip(compute())
            if not self.store.done(entry):  # another machine may have stored it meanwhile
                work = scratch_dir("memo")
                try:
                    (work / VALUE_FILE).write_text(json.dumps(value))
                    self.store.put(entry, work)
                finally:
                    remove(work)
            return value


def memoised(memo: Memo | None, kind: str, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """`memo(kind, key, compute)`, or compute()'s JSON round trip where there is no memo (an analysis
    run outside a sweep's store): the same type either way."""
    return memo(kind, key, compute) if memo is not None else _json_round_trip(compute())
