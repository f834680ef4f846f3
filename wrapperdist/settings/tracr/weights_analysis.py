"""Tracr-only views of a fine-tuned compiled model: where its attention goes (paper Fig. 10: on the
compiled target's tokens, or on the fine-tuning target's) and which single weights Alg. 3 removes,
named as the paper names them (Figs. 55-59: block, matrix, index, e.g. B1WV97-0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from wrapperdist.config import ExperimentConfig
from wrapperdist.mech import attention_patterns, rank_rows, weight_scores, weights_removed
from wrapperdist.mech.pruning import Weight, weight_matrices
from wrapperdist.settings.answer_analysis import ANALYSIS_SEED
from wrapperdist.settings.tracr.tasks import TracrTarget, TracrTasks, reference_answer
from wrapperdist.sink import Sink

MAX_CUMULATIVE_K = 20  # the paper's Fig. 57: K = 0..20 single weights (fewer where prune.ks stops sooner)
SINGLE_TOP = 10  # the top-ranked weights also removed one at a time (Figs. 55-56: W1..W4)
_MATRIX = {"attn.q": "Q", "attn.k": "K", "attn.v": "V", "attn.proj": "O", "mlp.fc": "1", "mlp.out": "2"}


def paper_weight_label(model: torch.nn.Module, weight: Weight) -> str:
    """`B1WV97-0`: block 1, value matrix, residual row 97 -> head column 0, in Tracr's (in, out)
    layout (torch stores (out, in)); MLP matrices `B1W1_64-32` / `B1W2_32-64`; embeddings as
    `Etok3-97` / `Epos5-12`."""
    name, flat = weight
    tensor = weight_matrices(model)[name][0]
    out_i, in_i = (int(i) for i in np.unravel_index(flat, tuple(tensor.shape)))
    if name.startswith("blocks."):
        _, block, *rest = name.split(".")
        matrix = _MATRIX[".".join(rest[:2])]
        return f"B{block}W{matrix}{'_' if matrix.isdigit() else ''}{in_i}-{out_i}"  # B1W1_64-32, not B1W164-32
    return f"E{name.split('_')[0]}{out_i}-{in_i}"  # an embedding row is (token or position) -> residual


def _marked(target: TracrTarget, sequence: list[str], tokens: list[str]) -> np.ndarray:
    """Positions a target's computation reads: the target token's (counter), or the position of the
    rank-th largest (max_identifier)."""
    if target.program == "counter":
        return np.array([s == target.arg for s in sequence])
    return np.array([s == reference_answer(target, sequence, tokens) for s in sequence])


def target_name(target: TracrTarget) -> str:
    return target.arg if target.program == "counter" else f"rank{target.arg}"


@torch.no_grad()
def attention_shares(model: Any, tasks: TracrTasks, sequences: list[list[str]], pt: TracrTarget,
                     ft: TracrTarget) -> dict[str, float]:
    """Per block, the mean attention mass (over sequences and their non-BOS query positions) on the
    keys O_PT reads and on those O_FT reads: `attention_on_a.block1`, `attention_on_b.block1` for
    the counter."""
    tokens = torch.from_numpy(tasks.encode(sequences))
    patterns = attention_patterns(model, tokens)  # (n_layer, B, n_head, T, T)
    T = tokens.shape[1]
    out: dict[str, float] = {}
    for target in (pt, ft):
        mask = torch.zeros(len(sequences), T)
        queries = torch.zeros(len(sequences), T)
        for row, seq in enumerate(sequences):
            mask[row, T - len(seq):] = torch.from_numpy(_marked(target, seq, tasks.tokens).astype(np.float32))
            queries[row, T - len(seq):] = 1.0
        mass = (patterns * mask[None, :, None, None, :]).sum(-1).mean(2)  # (n_layer, B, T): over heads
        share = (mass * queries).sum((1, 2)) / queries.sum()
        for layer, x in enumerate(share.tolist()):
            out[f"attention_on_{target_name(target)}.block{layer}"] = x
    return out


@dataclass
class SingleWeightResult:
    figure: Figure
    report: str


def single_weight_analysis(setting: Any, cfg: ExperimentConfig, tasks: Any, model: Any,
                           sink: Sink) -> SingleWeightResult:
    """Alg. 3 on single weights (the same ranking as the shared analysis: same data, same score),
    removed cumulatively for K = 0..min(20, max(prune.ks)) and each of the top ten alone; logs
    `prune.single.*`."""
    p = cfg.analysis.prune
    tokens, answers = (torch.from_numpy(x) for x in
                       tasks.batch("capability", p.score_samples, np.random.default_rng(ANALYSIS_SEED)))
    ranking = rank_rows(weight_scores(model, tokens, answers, p.scope))
    evaluate = setting.evaluator(cfg, setting.analysis_eval_keys)
    ks = tuple(range(min(MAX_CUMULATIVE_K, max(p.ks)) + 1))
    cumulative = []
    for k in ks:
        with weights_removed(model, ranking[:k]):
            cumulative.append(evaluate(model))
    labels = [paper_weight_label(model, w) for w in ranking[: max(SINGLE_TOP, ks[-1])]]
    singles = []
    for w in ranking[:SINGLE_TOP]:
        with weights_removed(model, [w]):
            singles.append(evaluate(model))
    base = cumulative[0]["pt_acc"]
    gains = [m["pt_acc"] - base for m in singles]
    best = int(np.argmax(gains))
    sink.log_metrics({"prune.single.best_gain": gains[best], "prune.single.best_rank": float(best),
                      "prune.single.cumulative_best_gain": max(m["pt_acc"] for m in cumulative) - base}, 0)
    for k, m in zip(ks, cumulative, strict=True):
        sink.log_metrics({f"prune.single.cumulative.{key}": v for key, v in m.items()}, k)
    lines = ["", "## Single weights (Alg. 3 on weights; paper's labels: block, matrix, residual-in - out)", "",
             "| rank | weight | pt / ft (C_Te=0), removed alone | pt / ft (C_Te=1), removed alone |",
             "|---|---|---|---|"]
    for i, m in enumerate(singles):
        lines.append(f"| {i + 1} | {labels[i]} | {m['pt_acc']:.3f} / {m['ft_acc']:.3f} | "
                     f"{m['pt_acc_spurious']:.3f} / {m['ft_acc_spurious']:.3f} |")
    lines += ["", f"Best single weight: {labels[best]}, pt_acc {base:.3f} -> {singles[best]['pt_acc']:.3f} "
              f"({gains[best]:+.3f}). Cumulative K = 0..{ks[-1]}: best pt_acc "
              f"{max(m['pt_acc'] for m in cumulative):.3f}.", ""]
    return SingleWeightResult(_figure(cumulative, labels[: ks[-1]], setting.eval_metrics, cfg.name), "\n".join(lines))


def _figure(cumulative: list[dict[str, float]], labels: list[str], metrics: Any, name: str) -> Figure:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    ks = list(range(len(cumulative)))
    for ax, suffix, title in ((axes[0], "", "C_Te = 0"), (axes[1], "_spurious", "C_Te = 1")):
        for key, style in ((f"pt_acc{suffix}", "-o"), (f"ft_acc{suffix}", "--^")):
            ax.plot(ks, [m[key] for m in cumulative], style, markersize=4, label=metrics[key].label)
        ax.set_xticks(ks, ["none"] + [f"+{w}" for w in labels], rotation=70, fontsize=6)
        ax.set(title=title, ylim=(-0.02, 1.02), xlabel="weights removed, cumulative (Alg. 3 order)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("answer accuracy")
    fig.suptitle(f"single-weight pruning ({name})")
    fig.tight_layout()
    return fig
