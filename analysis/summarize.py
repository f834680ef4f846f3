"""Summarise what is in an MLflow experiment, read through the MLflow client API (never the store's
files): the latest sweep's fine-tunes with their analyses and reFT runs, or the latest invocations.

    python analysis/summarize.py --experiment wrapperdist [--last 5]
"""

from __future__ import annotations

import argparse

import mlflow

from wrapperdist.tracking import PARENT_TAG, STAGE_TAG, resolve_tracking_uri

ACC = ("pt_acc", "ft_acc", "ft_acc_spurious")


def _fmt(run, key: str) -> str:
    value = run.data.metrics.get(key)
    return "-" if value is None else f"{value:.3f}"


def _num(metrics: dict, key: str, digits: int = 2) -> str:
    """A metric, or 'never' where the analysis recorded none (e.g. a threshold not reached)."""
    return f"{metrics[key]:.{digits}f}" if key in metrics else "never"


def sweep_table(runs, sweep) -> list[str]:
    inside = [r for r in runs if r.data.tags.get("wrapperdist.sweep") == sweep.info.run_id]
    children = {}
    for r in inside:
        children.setdefault(r.data.tags.get(PARENT_TAG), []).append(r)
    lines = [f"sweep {sweep.info.run_name!r} ({sweep.info.run_id[:8]}, {sweep.info.status})", "",
             "| fine-tune | status | pt_acc | ft_acc | ft_acc (C_Te=1) | verdict | probe pt (ft / random) | "
             "reFT steps (ft / Scr.+FT) | reFT pt_acc per budget |",
             "|---|---|---|---|---|---|---|---|---|"]
    for ft in sorted((r for r in inside if r.data.tags.get(STAGE_TAG) == "finetune"), key=lambda r: r.info.run_name):
        below = children.get(ft.info.run_id, [])
        analysis = next((r for r in below if r.data.tags.get(STAGE_TAG) == "analysis"), None)
        refts = sorted((r for r in below if r.data.tags.get(STAGE_TAG) == "reft"),
                       key=lambda r: int(r.data.params.get("reft.budget", 0)))
        verdict = probe = steps = "-"
        if analysis is not None:
            m = analysis.data.metrics
            verdict = analysis.data.tags.get("wrapperdist.verdict", analysis.info.status)
            probe = f"{_num(m, 'evidence.probe_finetuned')} / {_num(m, 'evidence.probe_random_init')}"
            steps = f"{_num(m, 'evidence.reft_steps_finetuned', 0)} / {_num(m, 'evidence.reft_steps_control', 0)}"
        budgets = ", ".join(f"{r.data.params.get('reft.budget')}: {_fmt(r, 'pt_acc')}" for r in refts) or "-"
        lines.append(f"| {ft.info.run_name} | {ft.info.status} | {_fmt(ft, 'pt_acc')} | {_fmt(ft, 'ft_acc')} | "
                     f"{_fmt(ft, 'ft_acc_spurious')} | {verdict} | {probe} | {steps} | {budgets} |")
    pretrains = [r for r in inside if r.data.tags.get(STAGE_TAG) == "pretrain"]
    lines += ["", "| pretrain | status | pt_acc | ft_acc | mix_acc |", "|---|---|---|---|---|"]
    lines += [f"| {r.info.run_name} | {r.info.status} | {_fmt(r, 'pt_acc')} | {_fmt(r, 'ft_acc')} | "
              f"{_fmt(r, 'mix_acc')} |" for r in pretrains]
    return lines


def invocation_table(runs, last: int) -> list[str]:
    parents = [r for r in runs if r.data.tags.get(STAGE_TAG) == "invocation"][:last]
    lines = ["| run | stage | status | " + " | ".join(ACC) + " |", "|" + "---|" * (3 + len(ACC))]
    for parent in parents:
        for run in sorted((r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id),
                          key=lambda r: r.info.start_time):
            values = " | ".join(_fmt(run, m) for m in ACC)
            lines.append(f"| {parent.info.run_name} ({parent.info.run_id[:8]}) | {run.data.tags[STAGE_TAG]} | "
                         f"{run.info.status} | {values} |")
    return lines


def summarize(experiment: str, last: int) -> str:
    mlflow.set_tracking_uri(resolve_tracking_uri())
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              order_by=["attributes.start_time DESC"])
    lines = [f"MLflow store {mlflow.get_tracking_uri()}, experiment {experiment!r}", ""]
    sweeps = [r for r in runs if r.data.tags.get(STAGE_TAG) == "sweep"]
    if sweeps:
        lines += sweep_table(runs, sweeps[0])
    elif any(r.data.tags.get(STAGE_TAG) == "invocation" for r in runs):
        lines += invocation_table(runs, last)
    else:
        lines.append("no wrapperdist runs yet")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="wrapperdist", help="MLflow experiment name")
    parser.add_argument("--last", type=int, default=5, help="how many recent invocations to show")
    args = parser.parse_args()
    print(summarize(args.experiment, args.last))


if __name__ == "__main__":
    main()
