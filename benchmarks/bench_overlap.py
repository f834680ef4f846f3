"""How many held-out PCFG texts also occur among the texts a pretraining run draws (the paper's
accuracies are on fresh samples; memorised strings would inflate ours).

    python benchmarks/bench_overlap.py [CONFIG] [--draws N]

Prints, for the config's window W, the share of 2,000 evaluation windows (the eval seed's stream)
found among N training windows (default: the pretraining run's steps × batch, capped at 1M)."""

from __future__ import annotations

import argparse

import numpy as np
from common import cpu_config

from wrapperdist.settings.registry import setting_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?")
    parser.add_argument("--draws", type=int, help="training windows to compare against")
    args = parser.parse_args()
    cfg = cpu_config(args.config)
    data = setting_for(cfg).tasks(cfg).tasks
    optim = cfg.pretrain.optim
    draws = args.draws or min(optim.steps * optim.batch_size, 1_000_000)
    seen: set[bytes] = set()
    rng = np.random.default_rng((cfg.seed, 1, 0))
    for start in range(0, draws, 50_000):
        seen.update(row.tobytes() for row in data.texts(min(50_000, draws - start), rng))
    held_out = data.texts(2000, np.random.default_rng(cfg.eval.seed))
    overlap = np.mean([row.tobytes() in seen for row in held_out])
    print(f"config: {cfg.name}  window W = {data.window}  training windows drawn: {draws:,} "
          f"({len(seen):,} distinct)")
    print(f"held-out windows also drawn in training: {overlap:.2%}")


if __name__ == "__main__":
    main()
