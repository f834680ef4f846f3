"""Record every metric history of a tiny pretrain → fine-tune → analysis → reFT sweep in each
setting (PCFG, Tracr, TinyStories), as JSON: the golden check of a refactor that must not change
any number. Run it on the code before and after the change and diff the two files:

    python scripts/record_histories.py /tmp/before.json      # on the old checkout
    python scripts/record_histories.py /tmp/after.json       # on the new one
    python scripts/record_histories.py --compare /tmp/before.json /tmp/after.json

Stage runs are matched by their content key (`wrapperdist.node_key`), so only what a run computed
is compared, not its run id or name. CPU training is deterministic on one machine: equal inputs give
bit-identical histories there (not across CPU models)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ANALYSIS = {"prune": {"ks": [0, 1, 4], "score_samples": 64, "random_controls": 1, "learned_steps": 10},
            "probe": {"samples": 120, "steps": 30}, "attention_prompts": 2}
EXPERIMENTS = {
    "pcfg": {"seed": 0, "setting": {"name": "pcfg", "window": 16, "count_window": 8, "index_k": 2,
                                    "spurious_fraction": 0.5},
             "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
             "pretrain": {"optim": {"lr": 3e-3, "steps": 40, "batch_size": 16, "eval_every": 20}},
             "finetune": {"optim": {"lr": 1e-3, "steps": 20, "batch_size": 16, "eval_every": 10}},
             "eval": {"samples": 64}, "analysis": {**ANALYSIS, "reft": {"steps": 20, "eval_every": 10,
                                                                          "lr_factor": 0.1}}},
    "tracr": {"seed": 0, "setting": {"name": "tracr", "program": "counter", "tokens": ["a", "b", "c"], "min_len": 1,
                                     "max_len": 6, "noise_std": 1e-4},
              "finetune": {"optim": {"optimizer": "sgd", "lr": 0.1, "steps": 40, "batch_size": 32, "eval_every": 20,
                                     "weight_decay": 0.0}},
              "eval": {"samples": 100}, "analysis": {**ANALYSIS, "reft": {"steps": 20, "eval_every": 10,
                                                                           "lr": 0.003}}},
    "stories": {"seed": 0, "model": {"n_layer": 1, "n_head": 2, "d_model": 32},
                "setting": {"name": "stories", "stories": 300, "eval_stories": 40, "vocab_size": 300, "seq_len": 96,
                            "generation_prompts": 3, "max_new_tokens": 16},
                "pretrain": {"optim": {"lr": 3e-3, "steps": 20, "batch_size": 16, "eval_every": 10}},
                "finetune": {"optim": {"lr": 1e-3, "steps": 10, "batch_size": 16, "eval_every": 5}},
                "eval": {"samples": 32},
                "analysis": {"probe": {"samples": 60, "steps": 20}, "reft": {"steps": 10, "eval_every": 5,
                                                                            "lr": 3e-4}}},
}


def record(setting: str, work: Path) -> dict[str, dict[str, list]]:
    """Run the tiny sweep of `setting` in `work`; {node key: {metric: [[step, value], ...]}}."""
    import mlflow

    db = f"sqlite:///{work / 'mlflow.db'}"
    (work / "exp.yaml").write_text(yaml.safe_dump({"name": setting, **EXPERIMENTS[setting],
                                                   "tracking": {"experiment": setting}}))
    (work / "sweep.yaml").write_text(yaml.safe_dump({"name": setting, "experiment": "exp.yaml", "analyze": True,
                                                     "revival_budgets": [10], "storage_path": str(work / "store"),
                                                     "resources": {"cpus": 1, "max_failures": 0}}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": db}
    done = subprocess.run([sys.executable, "-m", "wrapperdist.cli", "sweep", str(work / "sweep.yaml"), "--local"],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{setting}: sweep failed\n{done.stderr[-3000:]}")
    client = mlflow.MlflowClient(db)
    experiment = client.get_experiment_by_name(setting)
    histories: dict[str, dict[str, list]] = {}
    for run in client.search_runs([experiment.experiment_id]):
        key = run.data.tags.get("wrapperdist.node_key")
        if key is None:  # the sweep run itself
            continue
        histories[key] = {name: [[m.step, m.value] for m in sorted(client.get_metric_history(run.info.run_id, name),
                                                                   key=lambda m: (m.step, m.timestamp))]
                          for name in sorted(run.data.metrics)}
    return histories


def compare(before: dict, after: dict) -> list[str]:
    """Every difference, by setting, node key and metric (empty: identical)."""
    diffs = []
    for setting in sorted(set(before) | set(after)):
        b, a = before.get(setting, {}), after.get(setting, {})
        for key in sorted(set(b) | set(a)):
            if key not in b or key not in a:
                diffs.append(f"{setting} {key}: only {'after' if key in a else 'before'}")
                continue
            for metric in sorted(set(b[key]) | set(a[key])):
                if b[key].get(metric) != a[key].get(metric):
                    diffs.append(f"{setting} {key} {metric}: {b[key].get(metric)} != {a[key].get(metric)}")
    return diffs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", type=Path, help="JSON file to write")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="diff two recordings")
    p.add_argument("--settings", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    args = p.parse_args()
    if args.compare:
        before, after = (json.loads(path.read_text()) for path in args.compare)
        diffs = compare(before, after)
        runs = sum(len(v) for v in before.values())
        values = sum(len(points) for v in before.values() for run in v.values() for points in run.values())
        print("\n".join(diffs[:50]) or f"identical: {runs} stage runs, {values} metric values")
        raise SystemExit(1 if diffs else 0)
    if args.out is None:
        p.error("give an output file, or --compare BEFORE AFTER")
    result = {}
    for setting in args.settings:
        with tempfile.TemporaryDirectory() as work:
            result[setting] = record(setting, Path(work))
            print(f"{setting}: {len(result[setting])} stage runs", file=sys.stderr)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
