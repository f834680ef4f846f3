"""Checkpoints: written atomically (temp file + rename, so a crash never leaves half a file) and
read with `torch.load(weights_only=True)`, which refuses arbitrary pickled objects."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Save the weights plus JSON-serialisable `meta` (model shape, step, config...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "meta_json": json.dumps(meta, sort_keys=True)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (state_dict, meta). Only tensors and plain containers are accepted."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    return state["model"], json.loads(state["meta_json"])
