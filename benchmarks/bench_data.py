"""PCFG samples/s against the rate at which the training step consumes them.

    python benchmarks/bench_data.py [CONFIG]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from common import cpu_config, rate

from wrapperdist.models import GPT
from wrapperdist.stages import build_tasks, finetune_batches, model_shape, pretrain_batches, set_threads
from wrapperdist.train import loss_on_batch, make_optimizer


def main() -> None:
    cfg = cpu_config(sys.argv[1] if len(sys.argv) > 1 else None)
    threads = set_threads(cfg)
    tasks = build_tasks(cfg)
    pt_stream, ft_stream = pretrain_batches(cfg, tasks), finetune_batches(cfg, tasks)
    pt_bs, ft_bs = cfg.pretrain.optim.batch_size, cfg.finetune.optim.batch_size
    pt_rate, _ = rate(lambda: next(pt_stream))
    ft_rate, _ = rate(lambda: next(ft_stream))

    model = GPT(model_shape(cfg, tasks))
    opt = make_optimizer(model, cfg.pretrain.optim)
    tokens, answers = (torch.from_numpy(x) for x in next(pt_stream))

    def step() -> None:
        loss = loss_on_batch(model, tokens, answers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_rate, _ = rate(step)
    print(f"config: {cfg.name}  torch threads: {threads}  seq_len: {tasks.seq_len}  params: {model.num_params():,}")
    print(f"pretraining mixture generation : {pt_rate * pt_bs:12,.0f} samples/s  (batch {pt_bs})")
    print(f"fine-tuning set generation     : {ft_rate * ft_bs:12,.0f} samples/s  "
          f"(batch {ft_bs}, C_Tr={cfg.finetune.spurious_fraction})")
    print(f"training step consumption      : {step_rate * pt_bs:12,.0f} samples/s  (batch {pt_bs})")
    print(f"generation / consumption       : {pt_rate / step_rate:8.1f}x pretraining, "
          f"{ft_rate * ft_bs / (step_rate * pt_bs):6.1f}x fine-tuning")
    print(f"share of a pretraining step spent generating its batch: {step_rate / pt_rate:.1%}")
    np.testing.assert_array_less(0, pt_rate)


if __name__ == "__main__":
    main()
