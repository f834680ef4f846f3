"""The Tracr sweeps' tables for the README, from MLflow: the paper's Tab. 3 analogue (Acc O_PT / Acc
O_FT on C_Te = 1 and 0, per LR and C_Tr) and, per fine-tune, single-weight pruning, attention on the
O_PT / O_FT keys (Fig. 10's measure) and reFT steps against Scr.+FT.

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="wrapperdist")
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    finetunes = {_key(r)[:3]: r.data.metrics for r in _runs(args.experiment, "finetune")}
    print("| program | η | C_Tr | C_Te=1 O_PT / O_FT | C_Te=0 O_PT / O_FT |\n|---|---|---|---|---|")
    for (program, lr, ctr), m in sorted(finetunes.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])):
        print(f"| {program} | {lr:g} | {ctr:g} | {_pct(m.get('pt_acc_spurious'))} / {_pct(m.get('ft_acc_spurious'))} "
              f"| {_pct(m.get('pt_acc'))} / {_pct(m.get('ft_acc'))} |")
    print("\n| program | η | C_Tr | reFT η | best single weight: pt gain | cumulative K≤20: pt gain | "
          "rows K≤15: pt gain | "
          "attention on O_PT / O_FT keys (block 1 counter, 2 max) | reFT steps to 0.9: FT / Scr.+FT / Scr.+FT 10× "
          "(pt_acc at end) | verdict |\n|---|---|---|---|---|---|---|---|---|---|")
    analyses = sorted(_runs(args.experiment, "analysis"), key=lambda r: (_key(r)[0], -_key(r)[1], *_key(r)[2:]))
    for r in analyses:
        program, lr, ctr, reft_lr = _key(r)
        m = r.data.metrics
        block = 1 if program == "counter" else 2
        names = ("a", "b") if program == "counter" else ("rank5", "rank6")
        att = [m.get(f"answers.attention_on_{n}.block{block}", float("nan")) for n in names]

        ends = [m.get(f"evidence.reft_final_pt_acc_{k}", float("nan")) for k in ("finetuned", "control",
                                                                                   "control_high_lr")]
        verdict = next((v for v in ("wrapper", "capability_changed") if m.get(f"verdict_{v}") == 1.0), "mixed")
        print(f"| {program} | {lr:g} | {ctr:g} | {reft_lr} | {m.get('prune.single.best_gain', float('nan')):+.3f} | "
              f"{m.get('prune.single.cumulative_best_gain', float('nan')):+.3f} | "
              f"{m.get('prune.rows.best_gain', float('nan')):+.3f} | "
              f"{att[0]:.2f} / {att[1]:.2f} | {_steps(m, 'finetuned')} / {_steps(m, 'control')} / - "
              f"({ends[0]:.2f} / {ends[1]:.2f} / {ends[2]:.2f}) | {verdict} |")


if __name__ == "__main__":
    main()
