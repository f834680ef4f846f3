"""Pretraining data mixed into fine-tuning (paper App. E.1): what the share of PT rows does to the
pretraining capability (O_PT, count `a`) and the fine-tuning task (O_FT, count `b`) after fine-tuning,
per share, mean ± sd over seeds, beside the constant predictor's floor and the pretrained model.

Reads the per-seed records of `sweeps/pt_mix.yaml` (written by runs_data.py). They are kept out of
the `runs.jsonl` files that claims.py and results_pages.py read: the Tab. 5 tables and claims group
fine-tunes by prior, LR and C_Tr, and would pool the shares.

    python analysis/runs_data.py --sweep-name pt-mix --out docs/results/pt-mix/pt_mix.jsonl
    python analysis/pt_mix.py docs/results/pt-mix/pt_mix.jsonl --out docs/results/pt-mix/table.md"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs_data import load  # noqa: E402

SHARE = "setting.pretrain_share"
# (metric, heading): C_Te = 0 excludes the planted relation, C_Te = 1 holds it on every string
COLUMNS = [("pt_acc", "O_PT, C_Te = 0"), ("ft_acc", "O_FT, C_Te = 0"),
           ("pt_acc_spurious", "O_PT, C_Te = 1"), ("ft_acc_spurious", "O_FT, C_Te = 1")]


def _spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def table(rows: list[dict]) -> list[str]:
    """One line per share: the pretrained model's O_PT (step 0 of the fine-tune), then every column
    after fine-tuning, each with its floor (the modal answer's accuracy on that set)."""
    by_share: dict[float, list] = {}
    for r in rows:
        by_share.setdefault(float(r.get("params", {}).get(SHARE, 0.0)), []).append(r["ft"])
    first = rows[0]["ft"]
    floors = [(first.analysis.get(f"floor.modal.{key}") or [(0, None)])[0][1] for key, _ in COLUMNS]
    lines = ["| PT share | seeds | FT steps | O_PT pretrained, C_Te = 0 | "
             + " | ".join(f"{head} after FT" for _, head in COLUMNS) + " |",
             "|---" * (4 + len(COLUMNS)) + "|"]
    for share, fts in sorted(by_share.items()):
        cells = [_spread([ft.metrics[key] for ft in fts]) for key, _ in COLUMNS]
        lines.append(f"| {100 * share:g} % | {', '.join(str(ft.seed) for ft in sorted(fts, key=lambda f: f.seed))} | "
                     f"{fts[0].steps} | {_spread([ft.pt_acc_pretrained for ft in fts])} | " + " | ".join(cells) + " |")
    if all(f is not None for f in floors):  # fine-tunes recorded without analysis carry none
        lines.append("| floor (modal answer) | | | | " + " | ".join(f"{100 * f:.1f}" for f in floors) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", help="the sweep's per-seed records (runs_data.py's output)")
    p.add_argument("--out", help="write the table here as well as to stdout")
    args = p.parse_args()
    rows = load(args.records)
    if not rows:
        sys.exit(f"{args.records}: no fine-tunes")
    ft = rows[0]["ft"]
    text = "\n".join([f"Accuracies in % (mean ± sd over seeds), prior {ft.prior}, FT LR {ft.lr:g}, C_Tr {ft.c_tr:g}; "
                      f"from `{args.records}`.", "", *table(rows), ""])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
