"""Training tokens/s: the project loop (`wrapperdist.train.train`, data generated on the fly,
schedule, clipping, logging to a sink) against a bare PyTorch loop over pre-generated batches on
the same model and optimiser. Rounds alternate so drift in machine speed hits both alike.

    python benchmarks/bench_train.py [CONFIG] [--steps N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import cpu_config

from wrapperdist.setting import Runtime, default_threads
from wrapperdist.settings.registry import setting_for
from wrapperdist.sink import MemorySink
from wrapperdist.train import make_optimizer, train


def bare_loop(model, batches, optim_cfg, loss_fn) -> None:
    opt = make_optimizer(model, optim_cfg)
    for tokens, answers in batches:
        loss = loss_fn(model, tokens, answers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim_cfg.grad_clip)
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cfg = cpu_config(args.config)
    Runtime().apply()
    threads = default_threads()
    setting = setting_for(cfg)
    optim_cfg = cfg.pretrain.optim.model_copy(update={"steps": args.steps, "eval_every": 0, "log_every": 10})
    tokens_per_step = optim_cfg.batch_size * setting.build_model(cfg).shape.seq_len
    stream = setting.batches(cfg, "pretrain", optim_cfg.batch_size)
    pregenerated = [tuple(torch.from_numpy(x) for x in next(stream)) for _ in range(args.steps)]

    def timed(fn) -> float:
        torch.manual_seed(0)
        model = setting.build_model(cfg)
        start = time.perf_counter()
        fn(model)
        return args.steps * tokens_per_step / (time.perf_counter() - start)

    bare, project = [], []
    for _ in range(args.rounds):
        bare.append(timed(lambda m: bare_loop(m, pregenerated, optim_cfg, setting.loss_fn(cfg, "pretrain"))))
        project.append(timed(lambda m: train(m, setting.batches(cfg, "pretrain", optim_cfg.batch_size), optim_cfg,
                                             MemorySink(), progress=False,
                                             loss_fn=setting.loss_fn(cfg, "pretrain"))))
    b, p = statistics.median(bare), statistics.median(project)
    print(f"config: {cfg.name}  torch threads: {threads}  steps/round: {args.steps}  rounds: {args.rounds}  "
          f"tokens/step: {tokens_per_step}")
    def show(values: list[float]) -> str:
        return ", ".join(f"{x:,.0f}" for x in values)

    print(f"bare PyTorch loop (pre-generated data): {b:10,.0f} tokens/s  (rounds: {show(bare)})")
    print(f"project loop (on-the-fly data)        : {p:10,.0f} tokens/s  (rounds: {show(project)})")
    print(f"project / bare                        : {p / b:10.3f}x  (target >= 0.95)")


if __name__ == "__main__":
    main()
