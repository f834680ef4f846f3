"""A sweep's per-seed results as data: one JSON line per fine-tune (its condition, final metrics,
the pretrained model's step-0 evaluation, its analysis' evidence and curves, the reFT budgets, and
the machine it ran on), exported from MLflow so that tables and claims are generated from a
committed file rather than from a store only one machine has.

    python analysis/runs_data.py --experiment wrapperdist --sweep-name headline --out docs/results/demo/runs.jsonl

`load` reads such a file back as sweep_runs.FineTune records (with their machine and setting)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_runs import FineTune, collect  # noqa: E402

from wrapperdist.tracking import STAGE_TAG, resolve_tracking_uri  # noqa: E402

PARAM_PREFIXES = ("setting.", "finetune.optim.", "analysis.", "seed")  # the condition, and how it was judged
MACHINE_TAGS = ("cpu", "cpu_capability", "blas", "device", "torch", "gpu", "host")


def sweep_run(client: MlflowClient, experiment_id: str, name: str | None = None, run_id: str | None = None):
    """The sweep run to export: by id, else the newest FINISHED sweep of that name."""
    if run_id:
        return client.get_run(run_id)
    where = f"tags.`{STAGE_TAG}` = 'sweep' and attributes.status = 'FINISHED'"
    if name:
        where += f" and tags.`wrapperdist.sweep` = '{name}'"
    runs = client.search_runs([experiment_id], filter_string=where, order_by=["attributes.start_time DESC"],
                              max_results=1)
    if not runs:
        raise SystemExit(f"no finished sweep run{f' named {name!r}' if name else ''} in this experiment")
    return runs[0]


def records(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[dict[str, Any]]:
    out = []
    for ft in collect(client, experiment_id, sweep_id):
        run = client.get_run(ft.run_id)
        machine = {k: run.data.tags[f"wrapperdist.{k}"] for k in MACHINE_TAGS if f"wrapperdist.{k}" in run.data.tags}
        params = {k: v for k, v in run.data.params.items() if k.startswith(PARAM_PREFIXES)}
        out.append({**asdict(ft), "setting": run.data.params.get("setting.name", ""), "params": params,
                    "machine": machine, "sweep_run_id": sweep_id})
    return out


def write(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def load(path: str | Path) -> list[dict[str, Any]]:
    """The records of a runs.jsonl file; `record["ft"]` is the sweep_runs.FineTune it holds."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    names = {f.name for f in fields(FineTune)}
    for row in rows:
        ft = FineTune(**{k: v for k, v in row.items() if k in names})
        ft.analysis = {k: [tuple(p) for p in v] for k, v in ft.analysis.items()}
        ft.reft_budgets = {int(k): v for k, v in ft.reft_budgets.items()}
        ft.curves = {k: [tuple(p) for p in v] for k, v in ft.curves.items()}
        ft.steps = ft.steps or int(row.get("params", {}).get("finetune.optim.steps", 0))  # files from before the field
        row["ft"] = ft
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="wrapperdist", help="MLflow experiment")
    p.add_argument("--sweep-name", help="the sweep's name (default: the newest finished sweep)")
    p.add_argument("--sweep", help="the sweep run id (overrides --sweep-name)")
    p.add_argument("--out", type=Path, required=True, help="JSON lines file to write")
    args = p.parse_args()
    client = MlflowClient(resolve_tracking_uri())
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment {args.experiment!r} in {resolve_tracking_uri()}")
    sweep = sweep_run(client, experiment.experiment_id, args.sweep_name, args.sweep)
    rows = records(client, experiment.experiment_id, sweep.info.run_id)
    write(rows, args.out)
    print(f"{len(rows)} fine-tunes of sweep {sweep.data.tags.get('wrapperdist.sweep')} "
          f"({sweep.info.run_id}) -> {args.out}")


if __name__ == "__main__":
    main()
