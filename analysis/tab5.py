"""The project's analogue of the paper's Table 5 (PCFG Counter; Jain et al. 2023, App. H), cell by
cell beside the paper's numbers, from a sweep's MLflow runs.

    python analysis/tab5.py --experiment wrapperdist [--sweep RUN_ID] [--out reports/tab5.md]

Pretrained models: count-a / count-b accuracy per prior (the fine-tunes' step-0 evaluation).
Fine-tunes: accuracy at the end of fine-tuning (the paper's 10K column) on O_PT and O_FT, C_Te = 0
and 1 (and plain strings, ours only), per LR, prior and C_Tr; means ± 95 % t-intervals over seeds.
Under each table its floors: the modal answer's and a random init's accuracy on each set, and the
measured rate of the planted relation on each set. The sweep's fine-tuning LRs,
largest first, stand for the paper's eta_L / eta_M / eta_S (1e-4 / 1e-5 / 1e-6)."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_tables import PAPER_ETA, PAPER_FINETUNED, PAPER_PRETRAINED, mean_ci, paper_finetuned  # noqa: E402
from report import floor_cell, floor_values, relation_line  # noqa: E402
from sweep_runs import collect  # noqa: E402

from wrapperdist.tracking import STAGE_TAG, resolve_tracking_uri  # noqa: E402

FINAL_KEYS = ("pt_acc", "pt_acc_spurious", "ft_acc", "ft_acc_spurious")
PLAIN_KEYS = ("pt_acc_plain", "ft_acc_plain")  # ours only: the paper reports no plain-text set
FLOORS = (("modal", "modal answer"), ("random_init", "random init"))
PRIORS = ("low", "medium", "high")


def _prior_order(prior: str) -> tuple[int, str]:
    """The paper's priors in order, other (custom) priors after them."""
    return (PRIORS.index(prior), "") if prior in PRIORS else (len(PRIORS), prior)


def _cell(paper: float | None, ours: list[float]) -> str:
    mean, half = mean_ci([100 * x for x in ours])
    interval = f" ± {half:.1f}" if len(ours) > 1 else ""  # one seed has no interval, not a zero-width one
    return f"{'—' if paper is None else f'{paper:g}'} / {mean:.1f}{interval}"


def _ours(values: list[float]) -> str:
    if not values:
        return "-"
    mean, half = mean_ci([100 * x for x in values])
    return f"{mean:.1f} ± {half:.1f}" if len(values) > 1 else f"{mean:.1f}"


def _floor(fine_tunes, kind: str, key: str) -> str:
    return floor_cell(floor_values(fine_tunes, f"floor.{kind}.{key}"), scale=100, digits=1)


def tables(fine_tunes) -> list[str]:
    """The two Markdown tables: pretrained models, then fine-tunes, paper / ours per cell, each with
    its floor rows (the modal answer, a random init: what an accuracy must beat, in %)."""
    pretrained = defaultdict(dict)  # prior -> seed -> (count a, count b): one pretrained model per seed
    for ft in fine_tunes:
        pretrained[ft.prior][ft.seed] = (ft.pt_acc_pretrained, ft.ft_acc_pretrained)
    lines = ["C_Te = 0: held-out strings on which the planted relation count(b) = count(a) + q fails (as "
             "the paper's Tab. 5 implies); C_Te = 1: strings on which it holds; plain: strings as drawn.", "",
             "| prior | count a before FT (paper / ours, %) | count b before FT |", "|---|---|---|"]
    for prior in sorted(pretrained, key=_prior_order):
        a, b = zip(*pretrained[prior].values(), strict=True)
        paper = PAPER_PRETRAINED.get(prior, (None, None))
        lines.append(f"| {prior} | {_cell(paper[0], list(a))} | {_cell(paper[1], list(b))} |")
    for kind, label in FLOORS:
        cells = [_floor(fine_tunes, kind, k) for k in ("pt_acc", "ft_acc")]  # count a / count b on C_Te = 0
        lines.append(f"| floor: {label} | " + " | ".join(cells) + " |")
    lrs = sorted({ft.lr for ft in fine_tunes}, reverse=True)
    names = dict(zip(lrs, "LMS", strict=False))
    mapping = ", ".join(f"eta_{names.get(lr, '?')} = {lr:g}" for lr in lrs)
    lines += ["", f"Fine-tuning LRs: {mapping} (paper: 1e-4 / 1e-5 / 1e-6).", "",
              "| eta | prior | C_Tr | O_PT, C_Te=0 | O_PT, C_Te=1 | O_FT, C_Te=0 | O_FT, C_Te=1 | O_PT, plain (ours) | "
              "O_FT, plain (ours) |",
              "|---|---|---|---|---|---|---|---|---|"]
    groups = defaultdict(list)
    for ft in fine_tunes:
        groups[(names.get(ft.lr, "?"), ft.prior, ft.c_tr)].append(ft)
    for (eta, prior, c_tr), group in sorted(groups.items(), key=lambda kv: ("LMS".find(kv[0][0]),
                                                                               _prior_order(kv[0][1]), kv[0][2])):
        paper = PAPER_FINETUNED.get((eta, prior, c_tr if c_tr not in (0.0, 1.0) else int(c_tr)))
        cells = [_cell(paper[i] if paper else None, [g.metrics[k] for g in group if k in g.metrics])
                 for i, k in enumerate(FINAL_KEYS)]
        cells += [_ours([g.metrics[k] for g in group if k in g.metrics]) for k in PLAIN_KEYS]
        lines.append(f"| {eta} | {prior} | {c_tr:g} | " + " | ".join(cells) + " |")
    for kind, label in FLOORS:
        lines.append(f"| floor: {label} | | | "
                     + " | ".join(_floor(fine_tunes, kind, k) for k in (*FINAL_KEYS, *PLAIN_KEYS)) + " |")
    return lines + relation_line(fine_tunes)


LENGTH_KEYS = (("pt_acc", "O_PT, C_Te = 0"), ("ft_acc", "O_FT, C_Te = 0"), ("ft_acc_spurious", "O_FT, C_Te = 1"))


def length_table(fine_tunes, long_steps: int = 10_000, short_steps: int = 1_000) -> list[str]:
    """Tab. 5's two columns from the runs of the paper's length (a point inside a `long_steps` run, and
    its end) beside the runs that end at `short_steps` (a whole cosine schedule in that many steps), for
    every cell that has both lengths; %, means ± 95 % t-intervals over seeds."""
    from sweep_runs import at_step

    cells = defaultdict(lambda: defaultdict(list))  # (eta, prior, C_Tr) -> column -> fine-tunes
    for ft in fine_tunes:
        column = {long_steps: "long", short_steps: "short"}.get(ft.steps)
        if column:
            cells[(PAPER_ETA.get(ft.lr, f"lr={ft.lr:g}"), ft.prior, ft.c_tr)][column].append(ft)
    lines = []
    for (eta, prior, c_tr), columns in sorted(cells.items(), key=lambda kv: (kv[0][0], _prior_order(kv[0][1]),
                                                                             kv[0][2])):
        if not columns["long"]:
            continue
        paper = paper_finetuned(eta, prior, c_tr)
        lines += [f"eta_{eta}, {prior} prior, C_Tr = {c_tr:g} — {len(columns['long'])} run(s) of {long_steps // 1000}K "
                  f"steps, {len(columns['short'])} of {short_steps // 1000}K:", "",
                  f"| accuracy (%) | {short_steps // 1000}K-step run, end | {long_steps // 1000}K-step run at "
                  f"{short_steps // 1000}K | {long_steps // 1000}K-step run, end | paper, {long_steps // 1000}K |",
                  "|---|---|---|---|---|"]
        for i, (key, label) in enumerate(LENGTH_KEYS):
            inside = [v for v in (at_step(ft, key, short_steps) for ft in columns["long"]) if v is not None]
            ends = [ft.metrics[key] for ft in columns["long"] if key in ft.metrics]
            shorts = [ft.metrics[key] for ft in columns["short"] if key in ft.metrics]
            theirs = "—" if paper is None else f"{paper[(0, 2, 3)[i]]:g}"
            lines.append(f"| {label} | {_ours(shorts)} | {_ours(inside)} | {_ours(ends)} | {theirs} |")
        lines.append("")
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
