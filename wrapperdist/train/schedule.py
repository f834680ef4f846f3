"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (the paper's FT schedule:
cosine with 20 % warm-up, minimum LR = max LR / 100)."""

import math


def warmup_cosine(step: int, total: int, max_lr: float, warmup_frac: float, min_lr_ratio: float) -> float:
    warmup = int(total * warmup_frac)
    min_lr = max_lr * min_lr_ratio
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if total <= warmup:
        return max_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
