"""Mechanistic analyses as pure functions over (model, data): pruning, probing, attention, reFT
bookkeeping and the wrapper verdict. No Ray, no MLflow."""

from wrapperdist.mech.attention import attention_patterns, pattern_shift
from wrapperdist.mech.probing import ProbeResult, majority_baseline, probe_layers, probe_layers_fresh, train_probe
from wrapperdist.mech.pruning import (
    CurvePoint,
    HeldOutGain,
    LearnedMask,
    Row,
    Weight,
    grad_x_weight_scores,
    held_out_gain,
    learned_removal_mask,
    random_ranking,
    random_row_ranking,
    random_weight_ranking,
    rank_rows,
    rank_units,
    removal_curve,
    row_scores,
    rows_removed,
    units_removed,
    weight_label,
    weight_scores,
    weights_removed,
)
from wrapperdist.mech.reft import steps_to_reach
from wrapperdist.mech.verdict import Evidence, Verdict, judge
from wrapperdist.mech.weights import mlp_unit_change, relative_change, weight_change_markdown

__all__ = [
    "Weight", "random_weight_ranking", "weight_label", "weight_scores", "weights_removed",
    "Row", "rank_rows", "random_row_ranking", "row_scores", "rows_removed",
    "CurvePoint", "Evidence", "HeldOutGain", "held_out_gain", "LearnedMask", "ProbeResult", "Verdict",
    "attention_patterns",
    "grad_x_weight_scores", "judge", "learned_removal_mask", "majority_baseline",
    "mlp_unit_change", "relative_change",
    "pattern_shift", "probe_layers", "probe_layers_fresh", "random_ranking", "rank_units", "removal_curve",
    "steps_to_reach", "train_probe", "units_removed", "weight_change_markdown",
]
