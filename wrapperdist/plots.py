"""Figures a person would rather look at than read. Agg backend: no display needed."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from wrapperdist.sink import MemorySink  # noqa: E402

ACCURACY_LABELS = {
    "pt_acc": "pretraining task (count O_PT)",
    "ft_acc": "fine-tuning task (count O_FT), C_Te=0",
    "ft_acc_spurious": "fine-tuning task, C_Te=1",
    "mix_acc": "pretraining mixture",
}


def training_curves(history: MemorySink, title: str) -> Figure:
    """Accuracies (left) and training loss (right) against steps for one stage."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in ACCURACY_LABELS.items():
        points = history.history(key)
        if points:
            steps, values = zip(*points, strict=True)
            ax_acc.plot(steps, values, marker="o", markersize=3, label=label)
    ax_acc.set(xlabel="step", ylabel="answer accuracy", ylim=(-0.02, 1.02), title="held-out accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8, loc="lower right")
    loss = history.history("train_loss")
    if loss:
        steps, values = zip(*loss, strict=True)
        ax_loss.plot(steps, values, color="black", linewidth=1)
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="cross-entropy (answer token)", title="training loss")
    ax_loss.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
