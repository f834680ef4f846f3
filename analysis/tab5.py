"""The project's analogue of the paper's Table 5 (PCFG Counter; Jain et al. 2023, App. H), cell by
cell beside the paper's numbers, from a sweep's MLflow runs.

    python analysis/tab5.py --experiment wrapperdist [--sweep RUN_ID] [--out reports/tab5.md]

Pretrained models: count-a / count-b accuracy per prior (the fine-tunes' step-0 evaluation).
Fine-tunes: accuracy at the end of fine-tuning (the paper's 10K column) on O_PT and O_FT, C_Te = 0
and 1, per LR, prior and C_Tr; means ± 95 % t-intervals over seeds. The sweep's fine-tuning LRs,
largest first, stand for the paper's eta_L / eta_M / eta_S (1e-4 / 1e-5 / 1e-6)."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import collect, mean_ci  # noqa: E402

from wrapperdist.tracking import STAGE_TAG, resolve_tracking_uri  # noqa: E402

# Tab. 5, 200K-iteration pretraining: percent accuracy before fine-tuning, (count a, count b) per prior.
PAPER_PRETRAINED = {"low": (100.0, 27.1), "medium": (100.0, 99.9), "high": (99.9, 99.9)}
# After 10K fine-tuning iterations: (O_PT on C_Te=0, O_PT on C_Te=1, O_FT on C_Te=0, O_FT on C_Te=1).
PAPER_FINETUNED = {
    ("L", "low", 0): (9.5, 0.0, 100.0, 87.5), ("L", "low", 0.5): (9.7, 0.0, 99.9, 100.0),
    ("L", "low", 0.8): (10.8, 0.0, 99.8, 100.0), ("L", "low", 1): (15.2, 0.0, 1.6, 100.0),
    ("L", "medium", 0): (92.6, 67.2, 100.0, 92.8), ("L", "medium", 0.5): (90.7, 73.5, 99.4, 100.0),
    ("L", "medium", 0.8): (43.4, 33.2, 99.2, 100.0), ("L", "medium", 1): (15.9, 2.4, 9.4, 100.0),
    ("L", "high", 0): (14.7, 44.1, 100.0, 99.2), ("L", "high", 0.5): (23.6, 33.4, 100.0, 99.9),
    ("L", "high", 0.8): (12.2, 2.2, 99.9, 99.9), ("L", "high", 1): (19.0, 0.0, 16.0, 100.0),
    ("M", "low", 0): (10.2, 4.6, 99.8, 79.7), ("M", "low", 0.5): (11.6, 1.2, 98.1, 99.7),
    ("M", "low", 0.8): (6.6, 0.2, 85.7, 99.7), ("M", "low", 1): (17.5, 0.0, 0.0, 100.0),
    ("M", "medium", 0): (85.3, 56.9, 99.9, 87.3), ("M", "medium", 0.5): (67.2, 55.4, 99.9, 99.8),
    ("M", "medium", 0.8): (34.6, 21.7, 99.4, 100.0), ("M", "medium", 1): (13.5, 0.8, 3.6, 100.0),
    ("M", "high", 0): (97.5, 65.7, 100.0, 95.4), ("M", "high", 0.5): (94.1, 69.0, 100.0, 100.0),
    ("M", "high", 0.8): (87.4, 67.7, 100.0, 100.0), ("M", "high", 1): (41.2, 53.3, 19.6, 100.0),
    ("S", "low", 0): (29.0, 25.7, 51.8, 29.2), ("S", "low", 0.5): (21.8, 10.6, 23.7, 87.5),
    ("S", "low", 0.8): (15.1, 6.8, 8.9, 99.7), ("S", "low", 1): (2.3, 0.0, 0.0, 99.9),
    ("S", "medium", 0): (100.0, 91.8, 99.5, 84.6), ("S", "medium", 0.5): (99.9, 94.4, 99.5, 99.6),
    ("S", "medium", 0.8): (99.4, 92.6, 99.3, 99.6), ("S", "medium", 1): (51.6, 63.9, 30.5, 99.7),
    ("S", "high", 0): (99.9, 98.1, 99.8, 95.6), ("S", "high", 0.5): (99.9, 93.7, 99.9, 99.6),
    ("S", "high", 0.8): (100.0, 93.1, 99.9, 99.9), ("S", "high", 1): (97.6, 85.1, 73.9, 100.0),
}
FINAL_KEYS = ("pt_acc", "pt_acc_spurious", "ft_acc", "ft_acc_spurious")
PRIORS = ("low", "medium", "high")


def _prior_order(prior: str) -> tuple[int, str]:
    """The paper's priors in order, other (custom) priors after them."""
    return (PRIORS.index(prior), "") if prior in PRIORS else (len(PRIORS), prior)


def _cell(paper: float | None, ours: list[float]) -> str:
    mean, half = mean_ci([100 * x for x in ours])
    return f"{'—' if paper is None else f'{paper:g}'} / {mean:.1f} ± {half:.1f}"


def tables(fine_tunes) -> list[str]:
    """The two Markdown tables: pretrained models, then fine-tunes, paper / ours per cell."""
    pretrained = defaultdict(dict)  # prior -> seed -> (count a, count b): one pretrained model per seed
    for ft in fine_tunes:
        pretrained[ft.prior][ft.seed] = (ft.pt_acc_pretrained, ft.ft_acc_pretrained)
    lines = ["| prior | count a before FT (paper / ours, %) | count b before FT |", "|---|---|---|"]
    for prior in sorted(pretrained, key=_prior_order):
        a, b = zip(*pretrained[prior].values(), strict=True)
        paper = PAPER_PRETRAINED.get(prior, (None, None))
        lines.append(f"| {prior} | {_cell(paper[0], list(a))} | {_cell(paper[1], list(b))} |")
    lrs = sorted({ft.lr for ft in fine_tunes}, reverse=True)
    names = dict(zip(lrs, "LMS", strict=False))
    mapping = ", ".join(f"eta_{names.get(lr, '?')} = {lr:g}" for lr in lrs)
    lines += ["", f"Fine-tuning LRs: {mapping} (paper: 1e-4 / 1e-5 / 1e-6).", "",
              "| eta | prior | C_Tr | O_PT, C_Te=0 | O_PT, C_Te=1 | O_FT, C_Te=0 | O_FT, C_Te=1 |",
              "|---|---|---|---|---|---|---|"]
    groups = defaultdict(list)
    for ft in fine_tunes:
        groups[(names.get(ft.lr, "?"), ft.prior, ft.c_tr)].append(ft)
    for (eta, prior, c_tr), group in sorted(groups.items(), key=lambda kv: ("LMS".find(kv[0][0]),
                                                                               _prior_order(kv[0][1]), kv[0][2])):
        paper = PAPER_FINETUNED.get((eta, prior, c_tr if c_tr not in (0.0, 1.0) else int(c_tr)))
        cells = [_cell(paper[i] if paper else None, [g.metrics[k] for g in group if k in g.metrics])
                 for i, k in enumerate(FINAL_KEYS)]
        lines.append(f"| {eta} | {prior} | {c_tr:g} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="wrapperdist", help="MLflow experiment name")
    parser.add_argument("--sweep", help="sweep run id (default: the latest sweep)")
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args()
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {args.experiment!r}")
    sweep_id = args.sweep or next(iter(client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = 'sweep'", order_by=["attributes.start_time DESC"],
        max_results=1)), None)
    if sweep_id is None:
        raise SystemExit("no sweep run found")
    sweep_id = sweep_id if isinstance(sweep_id, str) else sweep_id.info.run_id
    fine_tunes = collect(client, exp.experiment_id, sweep_id)
    text = "\n".join(tables(fine_tunes))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
