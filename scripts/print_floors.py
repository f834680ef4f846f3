"""The floors of an experiment's held-out sets (`wrapperdist/settings/floors.py`), printed as a
Markdown table: the modal answer's and a random init's accuracy, and the planted relation's measured
rate, per set. No MLflow, no training (a compiled setting compiles its model for the random init's shape).

    python scripts/print_floors.py experiments/cpu_small.yaml experiments/tracr_counter.yaml"""

from __future__ import annotations

import sys

import torch

from wrapperdist.config import load_config
from wrapperdist.settings.registry import setting_for


def main(paths: list[str]) -> None:
    for path in paths:
        cfg = load_config(path)
        setting = setting_for(cfg)
        torch.manual_seed(cfg.seed)
        model = setting.compile(cfg) or setting.build_model(cfg)
        floors = setting.floors(cfg, model)
        print(f"\n{path} ({setting.describe(cfg)}; {cfg.eval.samples} examples per set)\n")
        print("| set | modal answer | random init | planted relation holds |\n|---|---|---|---|")
        for key in setting.eval_metrics:
            cells = [floors.get(f"floor.{kind}.{key}") for kind in ("modal", "random_init", "relation")]
            print(f"| {key} | " + " | ".join("-" if c is None else f"{100 * c:.1f} %" for c in cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
