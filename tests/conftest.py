import os
import tempfile

import mlflow
import pytest
import torch
import yaml

# Tests never touch the developer's ./mlflow.db: each test that tracks gets its own store.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# ... nor a memo an earlier session (or older code) left: the analyses' shared results live per test session.
os.environ["WRAPPERDIST_CACHE"] = tempfile.mkdtemp(prefix="wrapperdist-test-memo-")

TINY = {
    "name": "tiny",
    "seed": 0,
    "setting": {"name": "pcfg", "window": 16, "count_window": 8, "index_k": 2, "spurious_fraction": 0.5},
    "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
    "pretrain": {"optim": {"lr": 3e-3, "steps": 30, "batch_size": 16, "eval_every": 10, "log_every": 5}},
    "finetune": {"optim": {"lr": 1e-3, "steps": 20, "batch_size": 16, "eval_every": 10, "log_every": 5}},
    "eval": {"samples": 64},
    "analysis": {
        "prune": {"ks": [0, 1, 4], "score_samples": 64, "random_controls": 2, "learned_steps": 10,
                  "learned_batch_size": 32},
        "probe": {"samples": 120, "steps": 30},
        "reft": {"steps": 20, "eval_every": 10, "lr_factor": 0.1},
        "attention_prompts": 2,
    },
}


@pytest.fixture
def tiny_config(tmp_path, monkeypatch):
    """A seconds-long experiment writing to a private MLflow store and output dir."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # The library's recorder calls mlflow.set_tracking_uri, which outlives a test and beats the
    # environment: without this, a test that records nothing would read the previous test's store.
    mlflow.set_tracking_uri(uri)
    cfg = dict(TINY, output_dir=str(tmp_path / "runs"), tracking={"experiment": "test"})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread_under_xdist(monkeypatch):
    """Three xdist workers share two cores (they overlap the Ray tests' waits). In-process training at
    a thread per core would oversubscribe them: measured beside two busy processes, the end-to-end
    analysis test took 28.6 s and 25.8 CPU-s at 2 torch threads, 22.5 s and 13.2 CPU-s at 1. Trials in
    Ray workers and subprocesses keep the threads their layout gives them."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        from wrapperdist.setting import Runtime

        monkeypatch.setattr(Runtime, "apply", lambda self: torch.set_num_threads(1))
