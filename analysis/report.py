"""The paper's PCFG figures and tables for a finished sweep, read through the MLflow client API
(never the store's files). Means over seeds with 95 % confidence intervals (Student t).

    python analysis/report.py [--experiment wrapperdist] [--sweep RUN_ID] [--out reports]

Writes, under OUT/<sweep name>/: accuracy.png (pretraining/fine-tuning accuracy per prior × LR),
pruning.png, probes.png, revival.png (reFT per budget), spurious.png (effect of C_Tr) and report.md.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from scipy import stats  # noqa: E402

from wrapperdist.tracking import PARENT_TAG, STAGE_TAG, resolve_tracking_uri  # noqa: E402

PROBE_MODELS = ("pretrained", "fine-tuned", "reFT", "random")


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t interval (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


@dataclass
class FineTune:
    run_id: str
    prior: str
    lr: float
    c_tr: float
    seed: int
    metrics: dict[str, float]
    analysis: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> (x, value)
    reft_budgets: dict[int, float] = field(default_factory=dict)  # budget -> pt_acc after reFT

    @property
    def cell(self) -> tuple[str, float, float]:
        return self.prior, self.lr, self.c_tr


def _prior(params: dict[str, str]) -> str:
    if "pretrain.data.prior" in params:
        return params["pretrain.data.prior"]
    return "(" + ",".join(params.get(f"pretrain.data.prior.{t}", "0") for t in "abc") + ")"


def collect(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[FineTune]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`wrapperdist.sweep` = '{sweep_id}'",
                              max_results=50_000)
    by_parent: dict[str, list] = defaultdict(list)
    for r in runs:
        by_parent[r.data.tags.get(PARENT_TAG, "")].append(r)
    out = []
    for r in runs:
        if r.data.tags.get(STAGE_TAG) != "finetune" or r.info.status != "FINISHED":
            continue
        p = r.data.params
        ft = FineTune(r.info.run_id, _prior(p), float(p["finetune.optim.lr"]),
                      float(p["finetune.spurious_fraction"]), int(p["seed"]), dict(r.data.metrics))
        for child in by_parent[r.info.run_id]:
            if child.info.status != "FINISHED":
                continue
            if child.data.tags.get(STAGE_TAG) == "reft":
                ft.reft_budgets[int(child.data.params["reft.budget"])] = child.data.metrics["pt_acc"]
            elif child.data.tags.get(STAGE_TAG) == "analysis":
                for key in child.data.metrics:
                    if key.startswith(("prune.", "probe.", "reft.", "evidence.", "verdict_")):
                        history = client.get_metric_history(child.info.run_id, key)
                        ft.analysis[key] = sorted((m.step, m.value) for m in history)
        out.append(ft)
    return out


def _grouped(fts: list[FineTune], key) -> dict:
    groups: dict = defaultdict(list)
    for ft in fts:
        groups[key(ft)].append(ft)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def _errorbar(ax, xs, groups: list[list[float]], label: str, **kw) -> None:
    means, cis = zip(*(mean_ci(g) for g in groups), strict=True)
    ax.errorbar(xs, means, yerr=cis, marker="o", markersize=4, capsize=3, label=label, **kw)


def accuracy_figure(fts: list[FineTune]):
    c_values = sorted({ft.c_tr for ft in fts})
    fig, axes = plt.subplots(len(c_values), 2, figsize=(11, 3.6 * len(c_values)), squeeze=False, sharey=True)
    for row, c in enumerate(c_values):
        for col, metric in enumerate(("pt_acc", "ft_acc")):
            ax = axes[row][col]
            for prior, group in _grouped([f for f in fts if f.c_tr == c], lambda f: f.prior).items():
                by_lr = _grouped(group, lambda f: f.lr)
                _errorbar(ax, list(by_lr), [[f.metrics[metric] for f in g] for g in by_lr.values()], f"prior {prior}")
            ax.set_xscale("log")
            ax.set(xlabel="fine-tuning LR", ylim=(-0.02, 1.02),
                   title=f"{'pretraining task' if metric == 'pt_acc' else 'fine-tuning task'} after FT, C_Tr={c:g}")
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("answer accuracy (mean, 95% CI over seeds)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, legend_size: int = 7):
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    return fig


def curve_figure(fts: list[FineTune], metric: str, xlabel: str, title: str):
    """Mean ± CI of an analysis curve (x = K, layer or step) per fine-tuning LR and C_Tr."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (lr, c), group in _grouped([f for f in fts if metric in f.analysis], lambda f: (f.lr, f.c_tr)).items():
        xs = [x for x, _ in group[0].analysis[metric]]
        values = [[dict(f.analysis[metric]).get(x, float("nan")) for f in group] for x in xs]
        _errorbar(ax, xs, values, f"lr {lr:g}, C_Tr {c:g}")
    return _finish(fig, ax, xlabel, "accuracy (mean, 95% CI over seeds)", title)


def revival_figure(fts: list[FineTune]):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (lr, c), group in _grouped([f for f in fts if f.reft_budgets], lambda f: (f.lr, f.c_tr)).items():
        budgets = sorted(group[0].reft_budgets)
        _errorbar(ax, budgets, [[f.reft_budgets[b] for f in group if b in f.reft_budgets] for b in budgets],
                  f"lr {lr:g}, C_Tr {c:g}")
    return _finish(fig, ax, "revival budget (reFT steps)", "pretraining-task accuracy after reFT",
                   "revival per budget")


def spurious_figure(fts: list[FineTune]):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for metric in ("pt_acc", "ft_acc", "ft_acc_spurious"):
        by_c = _grouped(fts, lambda f: f.c_tr)
        _errorbar(ax, list(by_c), [[f.metrics[metric] for f in g] for g in by_c.values()], metric)
    return _finish(fig, ax, "spurious fraction C_Tr", "accuracy after FT (all priors and LRs)",
                   "effect of the spurious correlation", legend_size=8)


def _cell(values: list[float]) -> str:
    mean, ci = mean_ci(values)
    return f"{mean:.3f} ± {ci:.3f}" if len(values) > 1 else f"{mean:.3f}"


def _finals(group: list[FineTune], key: str) -> list[float]:
    """The last value of an analysis metric, for the runs that have it."""
    return [f.analysis[key][-1][1] for f in group if key in f.analysis]


def markdown(sweep_name: str, fts: list[FineTune]) -> str:
    lines = [f"# Sweep {sweep_name}", "", f"{len(fts)} finished fine-tunes; mean ± 95 % CI over seeds.", "",
             "| prior | FT lr | C_Tr | seeds | pt_acc | ft_acc | ft_acc (C_Te=1) | probe count-a (FT) | "
             "reFT steps to threshold | wrapper verdicts |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (prior, lr, c), group in _grouped(fts, lambda f: f.cell).items():
        probe = _finals(group, "evidence.probe_finetuned")
        steps = _finals(group, "evidence.reft_steps_finetuned")
        verdicts = _finals(group, "verdict_wrapper")
        lines.append(
            f"| {prior} | {lr:g} | {c:g} | {len(group)} | {_cell([f.metrics['pt_acc'] for f in group])} | "
            f"{_cell([f.metrics['ft_acc'] for f in group])} | {_cell([f.metrics['ft_acc_spurious'] for f in group])} | "
            f"{_cell(probe) if probe else '-'} | {_cell(steps) if steps else '-'} | "
            f"{f'{int(sum(verdicts))}/{len(verdicts)}' if verdicts else '-'} |")
    budgets = sorted({b for f in fts for b in f.reft_budgets})
    if budgets:
        lines += ["", "## Revival per budget (pretraining-task accuracy after reFT)", "",
                  "| prior | FT lr | C_Tr | " + " | ".join(f"{b} steps" for b in budgets) + " |",
                  "|---|---|---|" + "---|" * len(budgets)]
        for (prior, lr, c), group in _grouped(fts, lambda f: f.cell).items():
            cells = [_cell([f.reft_budgets[b] for f in group if b in f.reft_budgets]) for b in budgets]
            lines.append(f"| {prior} | {lr:g} | {c:g} | " + " | ".join(cells) + " |")
    lines += ["", "Figures: accuracy.png, pruning.png, probes.png, revival.png, spurious.png"]
    return "\n".join(lines) + "\n"


def build_report(experiment: str, out: Path, sweep_id: str | None = None) -> Path:
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} in {resolve_tracking_uri()}")
    if sweep_id is None:
        sweeps = client.search_runs([exp.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = 'sweep'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        if not sweeps:
            raise SystemExit(f"no sweep run in experiment {experiment!r}")
        sweep_id = sweeps[0].info.run_id
    sweep = client.get_run(sweep_id)
    fts = collect(client, exp.experiment_id, sweep_id)
    if not fts:
        raise SystemExit(f"sweep {sweep_id} has no finished fine-tune runs")
    folder = out / sweep.info.run_name.removeprefix("sweep ").replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    figures = {
        "accuracy": accuracy_figure(fts),
        "pruning": curve_figure(fts, "prune.paper.pt_acc", "MLP units removed (K, grad x weight)",
                                "pretraining-task accuracy after pruning"),
        "probes": curve_figure(fts, "probe.pt.fine-tuned", "residual stream depth (0 = embeddings)",
                               "probe for count O_PT on the fine-tuned model"),
        "revival": revival_figure(fts),
        "spurious": spurious_figure(fts),
    }
    for name, fig in figures.items():
        fig.savefig(folder / f"{name}.png", dpi=110)
        plt.close(fig)
    report = folder / "report.md"
    report.write_text(markdown(sweep.info.run_name, fts))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="wrapperdist", help="MLflow experiment name")
    parser.add_argument("--sweep", help="sweep run id (default: the latest sweep)")
    parser.add_argument("--out", default="reports", type=Path, help="output folder")
    args = parser.parse_args()
    print(f"report: {build_report(args.experiment, args.out, args.sweep)}")


if __name__ == "__main__":
    main()
