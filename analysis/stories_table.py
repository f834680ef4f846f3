"""The TinyStories tables of the README from a stories sweep in MLflow (read through the client API):
the paper's Tab. 1 beside the project's analogue — twist rate during reFT per deletion protocol and
LR, mean over seeds with a 95 % t-interval and the min–max — and the per-layer Twist probe of the
deleted models against Present in PT and Not in PT (Fig. 11 left).

    python analysis/stories_table.py --experiment wrapperdist [--sweep tinystories-twist] [--out FILE]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import mlflow
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_tables import mean_ci  # noqa: E402

from wrapperdist.settings.stories.analysis import StoriesVerdict, evidence_from_metrics, judge_stories
from wrapperdist.sweep.recorder import SWEEP_TAG
from wrapperdist.tracking import STAGE_TAG, resolve_tracking_uri

# paper.md §8, Tab. 1: % of generations with a twist during reFT at 0 / 30 / 300 / 3000 iterations
PAPER_TAB1 = {("F", "M"): (44, 81, 81, 82), ("F+R", "M"): (12, 56, 69, 75), ("F+MM", "M"): (31, 88, 50, 75),
              ("F", "S"): (69, 88, 75, 94), ("F+R", "S"): (12, 44, 81, 81), ("F+MM", "S"): (50, 81, 62, 81),
              ("Not in PT", ""): (12, 31, 44, 81)}


def interval(values: list[float]) -> str:
    """mean ± 95 % t half-width [min–max] over seeds (as percentages)."""
    x = [100 * float(v) for v in values]
    mean, half = mean_ci(x)
    if len(x) < 2:
        return f"{mean:.0f} (n=1)"
    return f"{mean:.0f} ± {half:.0f} [{min(x):.0f}–{max(x):.0f}]"


def latest_sweep(client, experiment_id: str, name: str):
    sweeps = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"],
                                filter_string=f"tags.`{STAGE_TAG}` = 'sweep' and tags.`{SWEEP_TAG}` = '{name}'")
    if not sweeps:
        raise SystemExit(f"no sweep named {name!r} in this experiment")
    return sweeps[0]


def points_of(metrics: dict[str, float], prefix: str) -> dict[int, float]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    return {int(m.group(1)): v for k, v in metrics.items() if (m := pattern.match(k))}


def verdict_of(run) -> StoriesVerdict:
    p = run.data.params
    return judge_stories(evidence_from_metrics(run.data.metrics), float(p["analysis.verdict.probe_margin"]),
                         float(p["analysis.verdict.reft_speedup"]))


def tables(runs) -> list[str]:
    """Markdown: Tab. 1 (paper beside project) and the per-layer probes."""
    by_cell: dict[tuple[str, float], list] = defaultdict(list)
    for r in runs:
        by_cell[(r.data.params["setting.deletion"], float(r.data.params["finetune.optim.lr"]))].append(r)
    lrs = sorted({lr for _, lr in by_cell}, reverse=True)
    size = {lr: "M" if i == 0 else "S" for i, lr in enumerate(lrs)}
    points = sorted(points_of(runs[0].data.metrics, "tab1.deleted.at_"))
    head = " | ".join(f"step {p}" for p in points)
    lines = ["| deletion (LR) | paper: 0 / 30 / 300 / 3000 | seeds | " + head + " |",
             "|---|---|---|" + "---|" * len(points)]
    for deletion in ("F", "F+R", "F+MM"):
        for lr in lrs:
            cell = by_cell.get((deletion, lr), [])
            if not cell:
                continue
            per_point = [[points_of(r.data.metrics, "tab1.deleted.at_")[p] for r in cell] for p in points]
            paper = " / ".join(map(str, PAPER_TAB1[(deletion, size[lr])]))
            lines.append(f"| {deletion} (η_{size[lr]} = {lr:g}) | {paper} | {len(cell)} | "
                         + " | ".join(interval(v) for v in per_point) + " |")
    # the Not-in-PT curve is the same for every deletion of a seed: one value per seed
    seeds = {r.data.params["seed"]: r for r in runs}
    control = [[points_of(r.data.metrics, "tab1.not_in_pt.at_")[p] for r in seeds.values()] for p in points]
    lines.append(f"| Not in PT (control) | {' / '.join(map(str, PAPER_TAB1[('Not in PT', '')]))} | {len(seeds)} | "
                 + " | ".join(interval(v) for v in control) + " |")
    present = [r.data.metrics["evidence.rate_pretrained"] for r in seeds.values()]
    lines += ["", f"Present in PT (before deletion): {interval(present)} (paper: not in Tab. 1).", "",
              "Loss on held-out twist stories during reFT (Fig. 11 right), mean over seeds:", "",
              "| model | " + " | ".join(f"step {p}" for p in points) + " |", "|---|" + "---|" * len(points)]
    for label, key, group in (*((f"deleted: {d} (η_{size[lr]})", "deleted", by_cell[(d, lr)])
                                for d in ("F", "F+R", "F+MM") for lr in lrs if by_cell.get((d, lr))),
                              ("Not in PT", "not_in_pt", list(seeds.values()))):
        losses = [np.mean([points_of(r.data.metrics, f"reftloss.{key}.at_")[p] for r in group]) for p in points]
        lines.append(f"| {label} | " + " | ".join(f"{x:.3f}" for x in losses) + " |")
    lines.append("")

    layers = sorted(points_of(runs[0].data.metrics, "probe_layer.present.")) if runs else []
    # depth 0 is the embedding's output, depth i the residual stream after block i - 1 (residual_names)
    names = ["embedding" if i == 0 else f"after block {i - 1}" for i in layers]
    lines += ["| Twist probe, held-out accuracy (%) | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(layers)]
    for label, key, group in (("Present in PT", "present", list(seeds.values())),
                              ("Not in PT", "not_in_pt", list(seeds.values())),
                              ("random init", "random", list(seeds.values())),
                              *((f"deleted: {d} (η_{size[lr]})", "deleted", by_cell[(d, lr)])
                                for d in ("F", "F+R", "F+MM") for lr in lrs if by_cell.get((d, lr)))):
            values = [[points_of(r.data.metrics, f"probe_layer.{key}.")[i] for r in group] for i in layers]
            lines.append(f"| {label} | " + " | ".join(interval(v) for v in values) + " |")
    majority = [r.data.metrics["evidence.probe_majority"] for r in seeds.values()]
    verdicts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in runs:
        verdicts[f"{r.data.params['setting.deletion']} (η_{size[float(r.data.params['finetune.optim.lr'])]})"][
            verdict_of(r).label] += 1
    lines += ["", f"Majority class: {interval(majority)}.", "",
              "Verdicts (recomputed from each run's logged evidence with the current rule): "
              + "; ".join(f"{cell}: " + ", ".join(f"{k} {n}" for k, n in sorted(v.items()))
                          for cell, v in verdicts.items()) + ".",
              "", "Cells: mean ± 95 % t half-width [min–max] over seeds, in %."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="wrapperdist")
    parser.add_argument("--sweep", default="tinystories-twist")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    mlflow.set_tracking_uri(resolve_tracking_uri(None))
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment {args.experiment!r}")
    sweep = latest_sweep(client, experiment.experiment_id, args.sweep)
    runs = [r for r in client.search_runs([experiment.experiment_id],
                                          filter_string=f"tags.`{STAGE_TAG}` = 'analysis'", max_results=5000)
            if r.data.tags.get(SWEEP_TAG) == sweep.info.run_id and r.info.status == "FINISHED"]
    if not runs:
        raise SystemExit(f"sweep {args.sweep!r} has no finished analysis runs")
    text = "\n".join([f"sweep {args.sweep!r} ({sweep.info.run_id[:8]}): {len(runs)} analyses", "", *tables(runs)])
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
