"""The paper's PCFG figures and tables for a finished sweep, read through the MLflow client API
(never the store's files). Means over seeds with 95 % confidence intervals (Student t).

    python analysis/report.py [--experiment wrapperdist] [--sweep RUN_ID] [--out reports]

Writes, under OUT/<sweep name>/: accuracy.png (pretraining/fine-tuning accuracy per prior × LR),
pruning.png (accuracy vs units pruned), probes.png (probe accuracy per layer: pretrained / fine-tuned /
reFT / random init), revival.png (reFT curves vs the from-scratch controls, with the revival-budget
runs), spurious.png (effect of C_Tr, when the sweep varies it) and report.md — and logs them to
the sweep's MLflow run (artifacts report/, the report as the run's description; --no-mlflow: not).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_tables import mean_ci  # noqa: E402

from wrapperdist.sweep.publish import publish_report  # noqa: E402
from wrapperdist.tracking import PARENT_TAG, STAGE_TAG, resolve_tracking_uri, ui_hint  # noqa: E402

PROBE_MODELS = ("pretrained", "fine-tuned", "reFT", "random")
ANALYSIS_PREFIXES = ("prune.", "probe.", "reft.", "evidence.", "verdict_", "weights.", "answers.", "floor.",
                     "tab1.", "gen.", "probe_layer.", "reftloss.")  # the analysis run's metrics a FineTune keeps
# the pretrained model, as the fine-tune's step-0 evaluation saw it
START_KEYS = ("pt_acc", "ft_acc", "pt_acc_spurious", "ft_acc_spurious", "pt_acc_plain", "ft_acc_plain")


@dataclass
class FineTune:
    run_id: str
    prior: str
    lr: float
    c_tr: float
    seed: int
    metrics: dict[str, float]
    pt_acc_pretrained: float  # the fine-tune's step-0 evaluation: the pretrained model, before any FT
    ft_acc_pretrained: float
    analysis: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> (x, value)
    start_metrics: dict[str, float] = field(default_factory=dict)  # every eval metric at step 0 (pretrained)
    reft_budgets: dict[int, float] = field(default_factory=dict)  # budget -> pt_acc after reFT

    @property
    def cell(self) -> tuple[str, float, float]:
        return self.prior, self.lr, self.c_tr


def _pretrained_as(pretrain_run_name: str) -> str:
    """The row label of a pretrained model, from its run's name (`pt <the setting's pretraining
    condition>`, e.g. `pt prior=medium seed=0`, `pt tracr=counter(a)`), less the seed: seeds are
    the replicates a row averages over."""
    label = re.sub(r"\s*seed=\S+", "", pretrain_run_name.removeprefix("pt ")).strip()
    return label.removeprefix("prior=")


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _start(client: MlflowClient, run, key: str) -> float:
    """A fine-tune's step-0 value of `key`; NaN for a setting that has no such metric (the
    TinyStories deletions log losses and twist rates, not answer accuracies)."""
    history = _history(client, run.info.run_id, key) if key in run.data.metrics else []
    return history[0][1] if history else float("nan")


def collect(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[FineTune]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`wrapperdist.sweep` = '{sweep_id}'",
                              max_results=50_000)
    by_parent: dict[str, list] = defaultdict(list)
    for r in runs:
        by_parent[r.data.tags.get(PARENT_TAG, "")].append(r)
    names = {r.info.run_id: r.info.run_name for r in runs}
    out = []
    for r in runs:
        if r.data.tags.get(STAGE_TAG) != "finetune" or r.info.status != "FINISHED":
            continue
        p = r.data.params
        pretrained = _pretrained_as(names.get(r.data.tags.get(PARENT_TAG, ""), ""))
        ft = FineTune(r.info.run_id, pretrained, float(p["finetune.optim.lr"]),
                      float(p.get("setting.spurious_fraction", 0.0)), int(p["seed"]), dict(r.data.metrics),
                      _start(client, r, "pt_acc"), _start(client, r, "ft_acc"))
        for key in START_KEYS:
            start = _history(client, r.info.run_id, key) if key in r.data.metrics else []
            if start:
                ft.start_metrics[key] = start[0][1]
        for child in by_parent[r.info.run_id]:
            if child.info.status != "FINISHED":
                continue
            if child.data.tags.get(STAGE_TAG) == "reft":
                ft.reft_budgets[int(child.data.params["reft.budget"])] = child.data.metrics["pt_acc"]
            elif child.data.tags.get(STAGE_TAG) == "analysis":
                for key in child.data.metrics:
                    if key.startswith(ANALYSIS_PREFIXES):
                        ft.analysis[key] = _history(client, child.info.run_id, key)
        out.append(ft)
    return sorted(out, key=lambda f: (PRIOR_ORDER.get(f.prior, 9), f.prior, f.lr, f.c_tr, f.seed))


PRIOR_ORDER = {"low": 0, "medium": 1, "high": 2}


def _grouped(fts: list[FineTune], key) -> dict:
    """Groups in first-seen order (collect() sorts priors low → high, then LR, C_Tr and seed)."""
    groups: dict = defaultdict(list)
    for ft in fts:
        groups[key(ft)].append(ft)
    return dict(groups)


def _errorbar(ax, xs, groups: list[list[float]], label: str, **kw) -> None:
    means, cis = zip(*(mean_ci(g) for g in groups), strict=True)
    ax.errorbar(xs, means, yerr=cis, marker="o", markersize=4, capsize=3, label=label, **kw)


def accuracy_figure(fts: list[FineTune]):
    """Pretraining and fine-tuning accuracy after FT per prior × LR; dashed: the pretrained model."""
    c_values = sorted({ft.c_tr for ft in fts})
    fig, axes = plt.subplots(len(c_values), 2, figsize=(11, 3.8 * len(c_values)), squeeze=False, sharey=True)
    for row, c in enumerate(c_values):
        for col, metric in enumerate(("pt_acc", "ft_acc")):
            ax = axes[row][col]
            for i, (prior, group) in enumerate(_grouped([f for f in fts if f.c_tr == c], lambda f: f.prior).items()):
                by_lr = _grouped(group, lambda f: f.lr)
                color = f"C{i}"
                _errorbar(ax, list(by_lr), [[f.metrics[metric] for f in g] for g in by_lr.values()],
                          f"prior {prior}, after FT", color=color)
                if metric == "pt_acc":
                    before = mean_ci([f.pt_acc_pretrained for f in group])[0]
                    ax.axhline(before, color=color, linestyle="--", linewidth=1, label=f"prior {prior}, pretrained")
            ax.set_xscale("log")
            ax.set(xlabel="fine-tuning LR", ylim=(-0.02, 1.02),
                   title=f"{'pretraining task (count O_PT)' if metric == 'pt_acc' else 'fine-tuning task (count O_FT)'}"
                         f", C_Tr={c:g}")
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("answer accuracy (mean, 95% CI over seeds)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def panel_grid(fts: list[FineTune], series: dict[str, str], xlabel: str, title: str, markers=None):
    """One panel per (prior, C_Tr) row × fine-tuning LR column; in each, mean ± 95 % CI over seeds of
    the analysis curves named in `series` (legend label -> metric key). `markers(group, ax)` may add
    points of its own (e.g. the revival-budget runs)."""
    rows = list(_grouped(fts, lambda f: (f.prior, f.c_tr)))
    cols = sorted({f.lr for f in fts})
    # at least ~8 in wide: a one-LR grid (the demo) otherwise cuts off its title and legend
    width = max(3.6 * len(cols), 8.0)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(width, 2.9 * len(rows)),
                             squeeze=False, sharex=True, sharey=True)
    for r, (prior, c) in enumerate(rows):
        for k, lr in enumerate(cols):
            ax = axes[r][k]
            group = [f for f in fts if (f.prior, f.c_tr, f.lr) == (prior, c, lr)]
            for i, (label, metric) in enumerate(series.items()):
                have = [f for f in group if metric in f.analysis]
                if not have:
                    continue
                xs = [x for x, _ in have[0].analysis[metric]]
                values = [[dict(f.analysis[metric]).get(x, float("nan")) for f in have] for x in xs]
                means, cis = zip(*(mean_ci(v) for v in values), strict=True)
                lo = [m - h for m, h in zip(means, cis, strict=True)]
                hi = [m + h for m, h in zip(means, cis, strict=True)]
                ax.plot(xs, means, color=f"C{i}", marker=".", markersize=3, linewidth=1.3, label=label)
                ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.15, linewidth=0)
            if markers:
                markers(group, ax)
            ax.set(ylim=(-0.02, 1.02), title=f"prior {prior}, C_Tr {c:g}, FT lr {lr:g}")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.title.set_fontsize(8)
            ax.grid(alpha=0.3)
            if r == len(rows) - 1:
                ax.set_xlabel(xlabel, fontsize=8)
        axes[r][0].set_ylabel("accuracy", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    per_row = max(1, min(len(labels), int(width // 3.2)))  # legend entries that fit side by side
    legend_rows = -(-max(1, len(labels)) // per_row)
    fig.suptitle(f"{title} (mean, shaded 95% CI over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05 * legend_rows / len(rows), 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=per_row, fontsize=8, frameon=False)
    return fig


PRUNING_SERIES = {
    "count O_PT, C_Te=0, grad x weight rows removed (Alg. 3)": "prune.paper.pt_acc",
    "count O_PT, C_Te=1, grad x weight rows removed": "prune.paper.pt_acc_spurious",
    "count O_PT, C_Te=0, random rows removed": "prune.random.pt_acc",
    "count O_FT, C_Te=0, grad x weight rows removed": "prune.paper.ft_acc",
    "count O_FT, C_Te=1, grad x weight rows removed": "prune.paper.ft_acc_spurious",
    "count O_FT, C_Te=0, random rows removed": "prune.random.ft_acc",
}
PROBE_SERIES = {f"{m} model": f"probe.pt.{m}" for m in PROBE_MODELS}
REFT_SERIES = {
    "fine-tuned -> reFT": "reft.finetuned.pt_acc",
    "Scr.+FT, same lr": "reft.control.pt_acc",
    "Scr.+FT, 10x lr": "reft.control_high_lr.pt_acc",
    "Scr. (random init)": "reft.random_init.pt_acc",
}


def _budget_markers(group: list[FineTune], ax) -> None:
    budgets = sorted({b for f in group for b in f.reft_budgets})
    if budgets:
        _errorbar(ax, budgets, [[f.reft_budgets[b] for f in group if b in f.reft_budgets] for b in budgets],
                  "budget runs (reFT of FT model)", color="black", linestyle="none")


def revival_figure(fts: list[FineTune]):
    return panel_grid(fts, REFT_SERIES, "reFT step", "pretraining-task accuracy during reFT vs from scratch",
                      markers=_budget_markers)


def spurious_figure(fts: list[FineTune]):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_c = _grouped(sorted(fts, key=lambda f: f.c_tr), lambda f: f.c_tr)
    for metric in ("pt_acc", "ft_acc", "ft_acc_spurious"):
        _errorbar(ax, list(by_c), [[f.metrics[metric] for f in g] for g in by_c.values()], metric)
    probe = {c: [f.analysis["evidence.probe_finetuned"][-1][1] for f in g if "evidence.probe_finetuned" in f.analysis]
             for c, g in by_c.items()}
    if all(probe.values()):
        _errorbar(ax, list(probe), list(probe.values()), "probe count O_PT (FT model)", linestyle="--")
    ax.set(xlabel="spurious fraction C_Tr", ylabel="accuracy after FT (all priors and LRs)", ylim=(-0.02, 1.02),
           title="effect of the spurious correlation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _cell(values: list[float]) -> str:
    mean, ci = mean_ci(values)
    return f"{mean:.3f} ± {ci:.3f}" if len(values) > 1 else f"{mean:.3f}"


def _metric_cell(group: list[FineTune], key: str) -> str:
    """A fine-tune metric some settings lack (the Tracr setting has no C_Te = 1 set)."""
    values = [f.metrics[key] for f in group if key in f.metrics]
    return _cell(values) if values else "-"


def _finals(group: list[FineTune], key: str) -> list[float]:
    """The last value of an analysis metric, for the runs that have it."""
    return [f.analysis[key][-1][1] for f in group if key in f.analysis]


def _analysis_cell(group: list[FineTune], key: str) -> str:
    values = _finals(group, key)
    return _cell(values) if values else "-"


def _steps_cell(group: list[FineTune]) -> str:
    """Steps to the reFT threshold over the runs that reached it, and how many never did (within the
    analysis budget): dropping those silently would make a destroyed capability look fast."""
    analysed = [f for f in group if "evidence.reft_budget" in f.analysis]
    if not analysed:
        return "-"
    steps = _finals(analysed, "evidence.reft_steps_finetuned")
    reached = f"{len(steps)}/{len(analysed)} reached"
    if not steps:
        return f"never ({reached})"
    mean, ci = mean_ci(steps)
    return f"{mean:.0f} ± {ci:.0f} ({reached})" if len(steps) > 1 else f"{mean:.0f} ({reached})"


def weights_tables(fts: list[FineTune], top: int = 8) -> list[str]:
    """Per pretrained model: the parameters fine-tuning moved most, relative change per FT lr."""
    prefix = "weights.change."
    lines: list[str] = []
    for prior, group in _grouped([f for f in fts if any(k.startswith(prefix) for k in f.analysis)],
                                 lambda f: f.prior).items():
        lrs = sorted({f.lr for f in group})
        names = {k for f in group for k in f.analysis if k.startswith(prefix)}
        mean = {n: mean_ci(_finals(group, n))[0] for n in names}
        ranked = sorted(names, key=lambda n: -mean[n])[:top]
        if not lines:
            lines += ["", "## Where fine-tuning changed the weights (‖W_ft − W_pt‖ / ‖W_pt‖, mean ± CI over seeds)"]
        lines += ["", f"{prior}: the {len(ranked)} most changed of {len(names)} parameter tensors", "",
                  "| parameter | " + " | ".join(f"FT lr {lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
        for n in ranked:
            cells = [_cell(_finals([f for f in group if f.lr == lr], n)) for lr in lrs]
            lines.append(f"| {n.removeprefix(prefix)} | " + " | ".join(cells) + " |")
    return lines


def floor_values(fts: list[FineTune], key: str) -> list[float]:
    """A floor metric (`floor.modal.pt_acc`, ...) of every fine-tune that logged it: on the fine-tune
    run (step 0), else on its analysis run."""
    return [f.metrics[key] if key in f.metrics else f.analysis[key][-1][1]
            for f in fts if key in f.metrics or key in f.analysis]


def floor_cell(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    """One value where every run has the same floor (the held-out sets are the config's), else the
    mean ± CI (the random init differs by seed); "-" where no run logged it."""
    if not values:
        return "-"
    if max(values) - min(values) < 1e-12:
        return f"{scale * values[0]:.{digits}f}"
    mean, ci = mean_ci([scale * v for v in values])
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


RELATION_SETS = {"C_Te=0": "pt_acc", "C_Te=1": "pt_acc_spurious", "plain": "pt_acc_plain"}


def relation_line(fts: list[FineTune]) -> list[str]:
    """Where the planted relation holds, as measured on the held-out sets (not as constructed)."""
    cells = {name: floor_cell(floor_values(fts, f"floor.relation.{key}")) for name, key in RELATION_SETS.items()}
    if all(c == "-" for c in cells.values()):
        return []
    return ["", "The planted relation holds on a share (measured on the held-out sets, `floor.relation.*`) of "
            + ", ".join(f"{name}: {cell}" for name, cell in cells.items()) + "."]


def markdown(sweep_name: str, fts: list[FineTune], figures: list[str] | None) -> str:
    lines = [f"# Sweep {sweep_name}", "", f"{len(fts)} finished fine-tunes; mean ± 95 % CI over seeds. pt_acc / "
             "ft_acc: answer accuracy on the pretraining (count O_PT) / fine-tuning (count O_FT) task on C_Te=0, "
             "the held-out strings on which the planted relation fails; C_Te=1: where it holds on every string; "
             "plain: the strings as drawn (the relation holds by chance). The floor rows: the accuracy of always "
             "giving the set's most common answer, and of a randomly initialised model of the same shape.", "",
             "| prior | FT lr | C_Tr | seeds | pt_acc pretrained | pt_acc after FT | ft_acc | ft_acc (C_Te=1) | "
             "ft_acc (plain) | probe count O_PT (FT model) | "
             "pruning: pt_acc gain, Alg. 3 (K on a selection split) / random (best K) | "
             "answers count(O_PT)+q | reFT steps to threshold | wrapper verdicts |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (prior, lr, c), group in _grouped(fts, lambda f: f.cell).items():
        probe = _finals(group, "evidence.probe_finetuned")
        verdicts = _finals(group, "verdict_wrapper")
        lines.append(
            f"| {prior} | {lr:g} | {c:g} | {len(group)} | {_cell([f.pt_acc_pretrained for f in group])} | "
            f"{_cell([f.metrics['pt_acc'] for f in group])} | {_cell([f.metrics['ft_acc'] for f in group])} | "
            f"{_metric_cell(group, 'ft_acc_spurious')} | {_metric_cell(group, 'ft_acc_plain')} | "
            f"{_cell(probe) if probe else '-'} | "
            f"{_analysis_cell(group, 'evidence.prune_heldout_gain')} / "
            f"{_analysis_cell(group, 'prune.random.best_gain')} | "
            f"{_analysis_cell(group, 'answers.count_pt_plus_offset')} | {_steps_cell(group)} | "
            f"{f'{int(sum(verdicts))}/{len(verdicts)}' if verdicts else '-'} |")
    for kind, label in (("modal", "floor: modal answer"), ("random_init", "floor: random init")):
        cells = [floor_cell(floor_values(fts, f"floor.{kind}.{key}"))
                 for key in ("pt_acc", "pt_acc", "ft_acc", "ft_acc_spurious", "ft_acc_plain")]
        lines.append(f"| {label} | | | | " + " | ".join(cells) + " | | | | | |")
    lines += relation_line(fts)
    floors = [x for f in fts for x in _finals([f], "evidence.probe_random_init")]
    if floors:
        lines += ["", f"Probe floor (same probe on a randomly initialised model): {_cell(floors)} over all runs."]
    budgets = sorted({b for f in fts for b in f.reft_budgets})
    if budgets:
        lines += ["", "## Revival per budget (pretraining-task accuracy after reFT)", "",
                  "| prior | FT lr | C_Tr | " + " | ".join(f"{b} steps" for b in budgets) + " |",
                  "|---|---|---|" + "---|" * len(budgets)]
        for (prior, lr, c), group in _grouped(fts, lambda f: f.cell).items():
            cells = [_cell([f.reft_budgets[b] for f in group if b in f.reft_budgets]) for b in budgets]
            lines.append(f"| {prior} | {lr:g} | {c:g} | " + " | ".join(cells) + " |")
    lines += weights_tables(fts)
    if figures is None:  # a table for a page without the report's figures (analysis/results_pages.py)
        return "\n".join(lines) + "\n"
    if "spurious" not in figures:
        lines += ["", "This sweep has a single C_Tr value, so there is no spurious-correlation figure "
                  "(sweep over `setting.spurious_fraction` for it, e.g. `sweeps/paper_cpu.yaml`)."]
    lines += ["", "Figures: " + ", ".join(f"[{name}]({name}.png)" for name in figures)]
    return "\n".join(lines) + "\n"


def build_report(experiment: str, out: Path, sweep_id: str | None = None, publish: bool = True) -> Path:
    """Write OUT/<sweep>/report.md and its figures; with `publish`, also onto the sweep's MLflow run."""
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
    sweep_name = sweep.info.run_name.removeprefix("sweep ")
    folder = out / sweep_name.replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    figures = {"accuracy": accuracy_figure(fts)}
    if any(f.analysis for f in fts):
        figures["pruning"] = panel_grid(fts, PRUNING_SERIES, "weight rows removed (K)",
                                        "accuracy of the fine-tuned model after pruning")
        figures["probes"] = panel_grid(fts, PROBE_SERIES, "residual stream depth (0 = embeddings)",
                                       "linear probe for count O_PT, per layer")
    if any(f.analysis or f.reft_budgets for f in fts):
        figures["revival"] = revival_figure(fts)
    if len({f.c_tr for f in fts}) > 1:
        figures["spurious"] = spurious_figure(fts)
    for name, fig in figures.items():
        fig.savefig(folder / f"{name}.png", dpi=110)
        plt.close(fig)
    report = folder / "report.md"
    report.write_text(markdown(sweep_name, fts, list(figures)))
    if publish:
        publish_report(client, sweep_id, folder, list(figures))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="wrapperdist", help="MLflow experiment name")
    parser.add_argument("--sweep", help="sweep run id (default: the latest sweep)")
    parser.add_argument("--out", default="reports", type=Path, help="output folder")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report to the sweep's MLflow run")
    args = parser.parse_args()
    print(f"report: {build_report(args.experiment, args.out, args.sweep, publish=not args.no_mlflow)}")
    uri = resolve_tracking_uri()
    exp = MlflowClient(uri).get_experiment_by_name(args.experiment)
    print(f"MLflow: the sweep run's description and report/ artifacts hold it too\n  {ui_hint(uri, exp.experiment_id)}")


if __name__ == "__main__":
    main()
