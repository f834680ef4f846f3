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
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_tables import mean_ci  # noqa: E402
from report_figures import (  # noqa: E402
    PROBE_SERIES,
    PRUNING_SERIES,
    accuracy_figure,
    panel_grid,
    revival_figure,
    spurious_figure,
)
from sweep_runs import FineTune, collect, grouped  # noqa: E402

from wrapperdist.sweep.publish import publish_report  # noqa: E402
from wrapperdist.tracking import STAGE_TAG, resolve_tracking_uri, ui_hint  # noqa: E402


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
    for prior, group in grouped([f for f in fts if any(k.startswith(prefix) for k in f.analysis)],
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
    for (prior, lr, c), group in grouped(fts, lambda f: f.cell).items():
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
        for (prior, lr, c), group in grouped(fts, lambda f: f.cell).items():
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
