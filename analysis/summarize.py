"""Print the invocations in an MLflow experiment with their stages' final metrics, read through the
MLflow client API (never the store's files).

    python analysis/summarize.py --experiment wrapperdist [--last 5]
"""

from __future__ import annotations

import argparse

import mlflow

from wrapperdist.tracking import PARENT_TAG, STAGE_TAG, resolve_tracking_uri

METRICS = ("pt_acc", "ft_acc", "ft_acc_spurious", "mix_acc")


def summarize(experiment: str, last: int) -> str:
    mlflow.set_tracking_uri(resolve_tracking_uri())
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              order_by=["attributes.start_time DESC"])
    parents = [r for r in runs if r.data.tags.get(STAGE_TAG) == "invocation"][:last]
    lines = [f"MLflow store {mlflow.get_tracking_uri()}, experiment {experiment!r}", ""]
    header = "| run | stage | status | " + " | ".join(METRICS) + " |"
    lines += [header, "|" + "---|" * (3 + len(METRICS))]
    for parent in parents:
        children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
        for run in sorted(children, key=lambda r: r.info.start_time):
            values = " | ".join(f"{run.data.metrics[m]:.3f}" if m in run.data.metrics else "-" for m in METRICS)
            lines.append(f"| {parent.info.run_name} ({parent.info.run_id[:8]}) | {run.data.tags[STAGE_TAG]} | "
                         f"{run.info.status} | {values} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="wrapperdist", help="MLflow experiment name")
    parser.add_argument("--last", type=int, default=5, help="how many recent invocations to show")
    args = parser.parse_args()
    print(summarize(args.experiment, args.last))


if __name__ == "__main__":
    main()
