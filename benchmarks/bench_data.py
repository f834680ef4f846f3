"""PCFG samples/s against the rate at which the training step consumes them.

    python benchmarks/bench_data.py [CONFIG]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from common import cpu_config, rate

from wrapperdist.setting import Runtime, default_threads
from wrapperdist.settings.registry import setting_for
from wrapperdist.train import make_optimizer


def main() -> None:
    cfg = cpu_config(sys.argv[1] if len(sys.argv) > 1 else None)
    Runtime().apply()
    threads = default_threads()
    setting = setting_for(cfg)
    pt_bs, ft_bs = cfg.pretrain.optim.batch_size, cfg.finetune.optim.batch_size
    pt_stream, ft_stream = setting.batches(cfg, "pretrain", pt_bs), setting.batches(cfg, "finetune", ft_bs)
    pt_rate, _ = rate(lambda: next(pt_stream))
    ft_rate, _ = rate(lambda: next(ft_stream))

    model = setting.build_model(cfg)
    opt = make_optimizer(model, cfg.pretrain.optim)
    tokens, answers = (torch.from_numpy(x) for x in next(pt_stream))

    def step() -> None:
        loss = setting.loss_fn(cfg, "pretrain")(model, tokens, answers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_rate, _ = rate(step)
    print(f"config: {cfg.name}  torch threads: {threads}  seq_len: {model.shape.seq_len}  "
          f"params: {model.num_params():,}")
    print(f"pretraining mixture generation : {pt_rate * pt_bs:12,.0f} samples/s  (batch {pt_bs})")
    print(f"fine-tuning set generation     : {ft_rate * ft_bs:12,.0f} samples/s  "
          f"(batch {ft_bs}, C_Tr={cfg.setting.finetune_part().get('spurious_fraction')})")
    print(f"training step consumption      : {step_rate * pt_bs:12,.0f} samples/s  (batch {pt_bs})")
    print(f"generation / consumption       : {pt_rate / step_rate:8.1f}x pretraining, "
          f"{ft_rate * ft_bs / (step_rate * pt_bs):6.1f}x fine-tuning")
    print(f"share of a pretraining step spent generating its batch: {step_rate / pt_rate:.1%}")
    np.testing.assert_array_less(0, pt_rate)


if __name__ == "__main__":
    main()
