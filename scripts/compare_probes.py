"""The count(O_PT) probe two ways on the same fine-tuned models: the CPU scale's fixed pool trained
full-batch (the default), and the paper's protocol, a fresh batch from the generator at every step
(App. D: 4K iterations; `analysis.probe.fresh_batch_size`). Both are scored on the same held-out
examples. Prints per checkpoint the best-layer accuracy of each, and of a random init (the floor),
so the pool's shortcut can be judged against the paper's protocol on numbers.

    python scripts/compare_probes.py runs/store/finetune-*/model.pt [--steps 4000] [--batch 64]"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wrapperdist.config import ExperimentConfig
from wrapperdist.mech import majority_baseline, probe_layers, probe_layers_fresh
from wrapperdist.models import load_model, random_like
from wrapperdist.settings.answer_analysis import ANALYSIS_SEED, FRESH_PROBE_SEED, _as_tensors, _fresh_batches
from wrapperdist.settings.registry import setting_for


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="fine-tuned model.pt files (their config is inside)")
    p.add_argument("--steps", type=int, default=4000, help="fresh-batch probe steps (the paper: 4000)")
    p.add_argument("--batch", type=int, default=64, help="fresh batch size (the paper does not state it)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print("| checkpoint | seed | pool probe (config's samples, steps) | fresh probe | random init, pool | majority |")
    print("|---|---|---|---|---|---|")
    for path in args.checkpoints:
        model, meta = load_model(path)
        cfg = ExperimentConfig.model_validate(meta["config"])
        tasks, pr = setting_for(cfg).tasks(cfg), cfg.analysis.probe
        # the analysis' own pool: the same draw as its count(O_PT) probe
        tokens, answers = _as_tensors(tasks.batch("capability", pr.samples, np.random.default_rng(ANALYSIS_SEED + 1)))
        targets = tasks.answer_class(answers)
        cut = int(len(tokens) * (1 - pr.test_frac))
        started = time.perf_counter()
        pool = probe_layers(model, tokens, targets, tasks.answer_classes(), pr.test_frac, pr.steps, pr.lr)
        pool_s, started = time.perf_counter() - started, time.perf_counter()
        fresh = probe_layers_fresh(model, _fresh_batches(tasks, "capability", args.batch, FRESH_PROBE_SEED),
                                   tokens[cut:], targets[cut:], tasks.answer_classes(), args.steps, pr.lr)
        fresh_s = time.perf_counter() - started
        floor = probe_layers(random_like(model, cfg.seed + 1), tokens, targets, tasks.answer_classes(), pr.test_frac,
                             pr.steps, pr.lr)
        best = {name: max(r.test_acc for r in res.values()) for name, res in
                (("pool", pool), ("fresh", fresh), ("random", floor))}
        print(f"| {path} | {cfg.seed} | {best['pool']:.3f} ({pr.samples}, {pr.steps}; {pool_s:.0f} s) | "
              f"{best['fresh']:.3f} ({args.steps} x {args.batch}; {fresh_s:.0f} s) | {best['random']:.3f} | "
              f"{majority_baseline(targets, pr.test_frac):.3f} |", flush=True)


if __name__ == "__main__":
    main()
