"""The Tracr sweeps' tables for the README, from MLflow: the paper's Tab. 3 analogue (Acc O_PT / Acc
O_FT on C_Te = 1, C_Te = 0 (the relation fails) and plain sequences, per LR and C_Tr, with each program's
floors: the modal answer's and a random init's accuracy, and the relation's measured rate) and, per
fine-tune, single-weight pruning, attention on the O_PT / O_FT keys (Fig. 10's measure) and reFT steps against Scr.+FT.

    python analysis/tracr_tables.py [--tracking-uri sqlite:///mlflow.db] [--experiment wrapperdist]"""

from __future__ import annotations

import argparse

import mlflow


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _runs(experiment: str, stage: str) -> list:
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string=f"tags.`wrapperdist.stage` = '{stage}'")
    return [r for r in runs if r.data.params.get("setting.name") == "tracr" and r.info.status == "FINISHED"]


def _key(r) -> tuple[str, float, float, str]:
    p = r.data.params
    return (p.get("setting.program", "?"), float(p["finetune.optim.lr"]), float(p.get("setting.spurious_fraction", 0)),
            p.get("analysis.reft.lr", "-"))


def _steps(m: dict[str, float], key: str) -> str:
    """reFT steps to the threshold, or "never" (the analysis logs reached = 0 then)."""
    if m.get(f"evidence.reft_reached_{key}") and f"evidence.reft_steps_{key}" in m:
        return str(int(m[f"evidence.reft_steps_{key}"]))
    return "never"


FLOOR_ROWS = (("modal", "floor: modal answer"), ("random_init", "floor: random init"))
SETS = (("pt_acc_spurious", "ft_acc_spurious"), ("pt_acc", "ft_acc"), ("pt_acc_plain", "ft_acc_plain"))


def _pair(m: dict[str, float], prefix: str, keys: tuple[str, str]) -> str:
    return " / ".join(_pct(m.get(prefix + k)) for k in keys)


def _span(ms: list[dict[str, float]], key: str) -> str:
    """A floor over a program's fine-tunes: one value where they agree, else the range (a sweep that
    varies the data, or the seed of the random init)."""
    values = [m[key] for m in ms if key in m]
    if not values:
        return "-"
    low, high = min(values), max(values)
    return _pct(low) if high - low < 1e-12 else f"{_pct(low)}–{_pct(high)}"


def accuracy_table(finetunes: dict[tuple[str, float, float], dict[str, float]]) -> list[str]:
    """Tab. 3's analogue, then per program its floors (the fine-tunes' step-0 `floor.*` metrics)."""
    lines = ["| program | η | C_Tr | C_Te=1 O_PT / O_FT | C_Te=0 O_PT / O_FT | plain O_PT / O_FT |",
             "|---|---|---|---|---|---|"]
    ordered = sorted(finetunes.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2]))
    for (program, lr, ctr), m in ordered:
        lines.append(f"| {program} | {lr:g} | {ctr:g} | " + " | ".join(_pair(m, "", keys) for keys in SETS) + " |")
    relation = []
    for program in sorted({k[0] for k in finetunes}):
        ms = [m for k, m in ordered if k[0] == program]
        for kind, label in FLOOR_ROWS:
            cells = [" / ".join(_span(ms, f"floor.{kind}.{k}") for k in keys) for keys in SETS]
            lines.append(f"| {program} | {label} | | " + " | ".join(cells) + " |")
        relation.append(f"{program}: C_Te=1 {_span(ms, 'floor.relation.pt_acc_spurious')}, C_Te=0 "
                        f"{_span(ms, 'floor.relation.pt_acc')}, plain {_span(ms, 'floor.relation.pt_acc_plain')}")
    return lines + ["", "The planted relation r(x, O_FT) - r(x, O_PT) = q holds on (%, measured on the held-out sets): "
                    + "; ".join(relation) + "."]


def analysis_table(analyses: list[tuple[tuple[str, float, float, str], dict[str, float]]]) -> list[str]:
    """Per analysed fine-tune ((program, lr, C_Tr, reFT lr), its analysis metrics): pruning,
    attention on the O_PT / O_FT keys (Fig. 10's measure), reFT against Scr.+FT, the verdict."""
    lines = ["| program | η | C_Tr | reFT η | best single weight: pt gain | cumulative K≤20: pt gain | "
             "rows K≤15: pt gain | attention on O_PT / O_FT keys (block 1 counter, 2 max) | reFT steps to 0.9: "
             "FT / Scr.+FT (pt_acc at end: FT / Scr.+FT / Scr.+FT 10×) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (program, lr, ctr, reft_lr), m in sorted(analyses, key=lambda a: (a[0][0], -a[0][1], *a[0][2:])):
        block = 1 if program == "counter" else 2
        names = ("a", "b") if program == "counter" else ("rank5", "rank6")
        att = [m.get(f"answers.attention_on_{n}.block{block}", float("nan")) for n in names]
        ends = [m.get(f"evidence.reft_final_pt_acc_{k}", float("nan")) for k in ("finetuned", "control",
                                                                                   "control_high_lr")]
        verdict = next((v for v in ("wrapper", "capability_changed") if m.get(f"verdict_{v}") == 1.0), "mixed")
        nan = float("nan")
        lines.append(f"| {program} | {lr:g} | {ctr:g} | {reft_lr} | {m.get('prune.single.best_gain', nan):+.3f} | "
                     f"{m.get('prune.single.cumulative_best_gain', float('nan')):+.3f} | "
                     f"{m.get('prune.rows.best_gain', float('nan')):+.3f} | "
                     f"{att[0]:.2f} / {att[1]:.2f} | {_steps(m, 'finetuned')} / {_steps(m, 'control')} "
                     f"({ends[0]:.2f} / {ends[1]:.2f} / {ends[2]:.2f}) | {verdict} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="wrapperdist")
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    finetunes = {_key(r)[:3]: r.data.metrics for r in _runs(args.experiment, "finetune")}
    print("\n".join(accuracy_table(finetunes)))
    print()
    print("\n".join(analysis_table([(_key(r), r.data.metrics) for r in _runs(args.experiment, "analysis")])))


if __name__ == "__main__":
    main()
