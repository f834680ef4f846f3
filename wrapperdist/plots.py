"""Figures a person would rather look at than read. Agg backend: no display needed."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from wrapperdist.setting import EvalMetric  # noqa: E402
from wrapperdist.sink import MemorySink  # noqa: E402


def training_curves(history: MemorySink, title: str, eval_metrics: Mapping[str, EvalMetric]) -> Figure:
    """Held-out shares (accuracies, generation rates; left) and losses (right) against steps for one
    stage; `eval_metrics` (the setting's) names and sorts the evaluation keys."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for key, metric in eval_metrics.items():
        points = history.history(key)
        if points and metric.kind == "share":
            steps, values = zip(*points, strict=True)
            ax_acc.plot(steps, values, marker="o", markersize=3, label=metric.label)
    ax_acc.set(xlabel="step", ylabel="accuracy / share", ylim=(-0.02, 1.02), title="held-out evaluation")
    ax_acc.grid(alpha=0.3)
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(fontsize=8, loc="lower right")
    losses = [("train_loss", "training loss", "-")]
    losses += [(key, m.label, "o-") for key, m in eval_metrics.items() if m.kind == "loss"]
    for key, label, style in losses:
        points = history.history(key)
        if points:
            steps, values = zip(*points, strict=True)
            ax_loss.plot(steps, values, style, linewidth=1, markersize=3, label=label)
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="losses")
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def pruning_figure(curves: dict[str, list[tuple[int, dict[str, float]]]], title: str,
                   labels: Mapping[str, EvalMetric]) -> Figure:
    """Accuracy against units removed, one line per method, one panel per evaluation set (the paper's
    Fig. 7: O_PT and O_FT accuracy, on C_Te = 0 and, where the setting has it, C_Te = 1); `labels`:
    the setting's eval metrics."""
    first = next(iter(curves.values()))[0][1]
    keys = [k for k in labels if k in first] or list(first)
    cols = 2
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.8 * rows), sharey=True, squeeze=False)
    styles = ["-o", "--^", "-s", ":d"]
    for ax, key in zip(axes.flat, keys, strict=False):
        for style, (method, points) in zip(styles, curves.items(), strict=False):
            ks = [k for k, _ in points]
            ax.plot(ks, [m[key] for _, m in points], style, markersize=4, label=method)
        ax.set(xlabel="units removed (K)", title=labels[key].label if key in labels else key, ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("answer accuracy")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def probe_figure(results: dict[str, dict[str, dict[str, float]]], floor: dict[str, float], title: str) -> Figure:
    """Held-out probe accuracy per layer; `results[target][model][layer]`, one panel per target."""
    targets = list(results)
    fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4), sharey=True, squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        for model, per_layer in results[target].items():
            layers = list(per_layer)
            ax.plot(range(len(layers)), list(per_layer.values()), "-o", markersize=4, label=model)
        ax.axhline(floor[target], color="grey", linestyle=":", label="majority class")
        ax.set_xticks(range(len(layers)), [n.replace(".resid_post", "").replace("blocks.", "block ")
                                           for n in layers], rotation=20, fontsize=8)
        ax.set(title=f"probe target: {target}", xlabel="residual stream after", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out probe accuracy")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def reft_figure(curves: dict[str, list[tuple[int, float]]], threshold: float, title: str,
                ylabel: str = "pretraining-task accuracy (count O_PT)") -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in curves.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, "-", marker=".", label=label)
    ax.axhline(threshold, color="grey", linestyle=":", label=f"threshold {threshold:.0%}")
    ax.set(xlabel="reFT step", ylabel=ylabel, ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def attention_figure(before, after, labels: list[str], title: str) -> Figure:
    """Grid of attention patterns of one prompt: rows = layers, columns = heads, pretrained | fine-tuned.
    `before`/`after`: (n_layer, n_head, T, T) arrays."""
    n_layer, n_head = before.shape[:2]
    fig, axes = plt.subplots(n_layer, 2 * n_head, figsize=(2.1 * 2 * n_head, 2.2 * n_layer + 0.6), squeeze=False)
    for layer in range(n_layer):
        for head in range(n_head):
            for side, (patterns, name) in enumerate(((before, "PT"), (after, "FT"))):
                ax = axes[layer][side * n_head + head]
                ax.imshow(patterns[layer, head], vmin=0, vmax=1, cmap="viridis")
                ax.set_title(f"{name} L{layer} H{head}", fontsize=7)
                ax.set_xticks([])
                ax.set_yticks([])
    fig.suptitle(f"{title}\nprompt: {' '.join(labels)}", fontsize=8)
    fig.tight_layout()
    return fig


def weight_change_figure(changes: dict[str, float], title: str) -> Figure:
    """Relative change of every parameter tensor between the pretrained and the fine-tuned model."""
    names = list(changes)
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(names) + 1.2))
    ax.barh(range(len(names)), [changes[n] for n in names], color="C0")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="‖W_ft − W_pt‖ / ‖W_pt‖  (absolute change where W_pt = 0)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
