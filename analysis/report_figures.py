"""The PCFG report's figures (matplotlib, Agg): accuracy per prior × LR, and panel grids of one
analysis series per cell (pruning, probes, reFT against the from-scratch controls), means over seeds
with 95 % t-intervals."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_tables import mean_ci  # noqa: E402
from sweep_runs import PROBE_MODELS, FineTune, grouped  # noqa: E402


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
            for i, (prior, group) in enumerate(grouped([f for f in fts if f.c_tr == c], lambda f: f.prior).items()):
                by_lr = grouped(group, lambda f: f.lr)
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
    rows = list(grouped(fts, lambda f: (f.prior, f.c_tr)))
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
    by_c = grouped(sorted(fts, key=lambda f: f.c_tr), lambda f: f.c_tr)
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
