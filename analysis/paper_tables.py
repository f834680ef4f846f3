"""The paper's PCFG Counter numbers (Jain et al. 2023, Tab. 5, App. H; 200K-iteration pretraining)
and the interval every table of ours uses. Data and arithmetic only (no MLflow), shared by the
MLflow reports."""

from __future__ import annotations

import math

from scipy import stats

# Tab. 5, 200K-iteration pretraining: percent accuracy before fine-tuning, (count a, count b) per prior.
PAPER_PRETRAINED = {"low": (100.0, 27.1), "medium": (100.0, 99.9), "high": (99.9, 99.9)}
# After 10K fine-tuning iterations: (O_PT on C_Te=0, O_PT on C_Te=1, O_FT on C_Te=0, O_FT on C_Te=1).
PAPER_FINETUNED = {
    ("L", "low", 0): (9.5, 0.0, 100.0, 87.5), ("L", "low", 0.5): (9.7, 0.0, 99.9, 100.0),
    ("L", "low", 0.8): (10.8, 0.0, 99.8, 100.0), ("L", "low", 1): (15.2, 0.0, 1.6, 100.0),
    ("L", "medium", 0): (92.6, 67.2, 100.0, 92.8), ("L", "medium", 0.5): (90.7, 73.5, 99.4, 100.0),
    ("L", "medium", 0.8): (43.4, 33.2, 99.2, 100.0), ("L", "medium", 1): (15.9, 2.4, 9.4, 100.0),
    ("L", "high", 0): (14.7, 44.1, 100.0, 99.2), ("L", "high", 0.5): (23.6, 33.4, 100.0, 99.9),
    ("L", "high", 0.8): (12.2, 2.2, 99.9, 99.9), ("L", "high", 1): (19.0, 0.0, 16.0, 100.0),
    ("M", "low", 0): (10.2, 4.6, 99.8, 79.7), ("M", "low", 0.5): (11.6, 1.2, 98.1, 99.7),
    ("M", "low", 0.8): (6.6, 0.2, 85.7, 99.7), ("M", "low", 1): (17.5, 0.0, 0.0, 100.0),
    ("M", "medium", 0): (85.3, 56.9, 99.9, 87.3), ("M", "medium", 0.5): (67.2, 55.4, 99.9, 99.8),
    ("M", "medium", 0.8): (34.6, 21.7, 99.4, 100.0), ("M", "medium", 1): (13.5, 0.8, 3.6, 100.0),
    ("M", "high", 0): (97.5, 65.7, 100.0, 95.4), ("M", "high", 0.5): (94.1, 69.0, 100.0, 100.0),
    ("M", "high", 0.8): (87.4, 67.7, 100.0, 100.0), ("M", "high", 1): (41.2, 53.3, 19.6, 100.0),
    ("S", "low", 0): (29.0, 25.7, 51.8, 29.2), ("S", "low", 0.5): (21.8, 10.6, 23.7, 87.5),
    ("S", "low", 0.8): (15.1, 6.8, 8.9, 99.7), ("S", "low", 1): (2.3, 0.0, 0.0, 99.9),
    ("S", "medium", 0): (100.0, 91.8, 99.5, 84.6), ("S", "medium", 0.5): (99.9, 94.4, 99.5, 99.6),
    ("S", "medium", 0.8): (99.4, 92.6, 99.3, 99.6), ("S", "medium", 1): (51.6, 63.9, 30.5, 99.7),
    ("S", "high", 0): (99.9, 98.1, 99.8, 95.6), ("S", "high", 0.5): (99.9, 93.7, 99.9, 99.6),
    ("S", "high", 0.8): (100.0, 93.1, 99.9, 99.9), ("S", "high", 1): (97.6, 85.1, 73.9, 100.0),
}
# The paper's absolute fine-tuning LRs (App. C.2), which the CPU scale kept (README, calibration).
PAPER_ETA = {1e-4: "L", 1e-5: "M", 1e-6: "S"}


def paper_finetuned(eta: str, prior: str, c_tr: float) -> tuple[float, float, float, float] | None:
    return PAPER_FINETUNED.get((eta, prior, c_tr if c_tr not in (0.0, 1.0) else int(c_tr)))


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t interval (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
