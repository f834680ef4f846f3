"""The fine-tunes of a finished sweep, read through the MLflow client API (never the store's
files): one `FineTune` record per FINISHED fine-tune run, with its step-0 (pretrained) evaluation,
its analysis run's metrics and its reFT budgets. The report, Tab. 5 and the per-seed export
(runs_data.py) all start from `collect`."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

from wrapperdist.tracking import PARENT_TAG, STAGE_TAG

PROBE_MODELS = ("pretrained", "fine-tuned", "reFT", "random")
ANALYSIS_PREFIXES = ("prune.", "probe.", "reft.", "evidence.", "verdict_", "weights.", "answers.", "floor.",
                     "tab1.", "gen.", "probe_layer.", "reftloss.")  # the analysis run's metrics a FineTune keeps
# the pretrained model, as the fine-tune's step-0 evaluation saw it
START_KEYS = ("pt_acc", "ft_acc", "pt_acc_spurious", "ft_acc_spurious", "pt_acc_plain", "ft_acc_plain")


@dataclass
class FineTune:
    run_id: str
    prior: str
    lr: float
    c_tr: float
    seed: int
    metrics: dict[str, float]
    pt_acc_pretrained: float  # the fine-tune's step-0 evaluation: the pretrained model, before any FT
    ft_acc_pretrained: float
    analysis: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> (x, value)
    start_metrics: dict[str, float] = field(default_factory=dict)  # every eval metric at step 0 (pretrained)
    reft_budgets: dict[int, float] = field(default_factory=dict)  # budget -> pt_acc after reFT
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # START_KEYS at every evaluation
    steps: int = 0  # fine-tuning steps (0: not recorded; then read from the run's params)

    @property
    def cell(self) -> tuple[str, float, float]:
        return self.prior, self.lr, self.c_tr


def _pretrained_as(pretrain_run_name: str) -> str:
    """The row label of a pretrained model, from its run's name (`pt <the setting's pretraining
    condition>`, e.g. `pt prior=medium seed=0`, `pt tracr=counter(a)`), less the seed: seeds are
    the replicates a row averages over."""
    label = re.sub(r"\s*seed=\S+", "", pretrain_run_name.removeprefix("pt ")).strip()
    return label.removeprefix("prior=")


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def start_value(client: MlflowClient, run, key: str) -> float:
    """A fine-tune's step-0 value of `key`; NaN for a setting that has no such metric (the
    TinyStories deletions log losses and twist rates, not answer accuracies)."""
    history = _history(client, run.info.run_id, key) if key in run.data.metrics else []
    return history[0][1] if history else float("nan")


def at_step(ft: FineTune, key: str, step: int) -> float | None:
    """`key` at evaluation `step` of the fine-tune (None where it was not evaluated there)."""
    return next((v for s, v in ft.curves.get(key, []) if s == step), None)


def collect(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[FineTune]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`wrapperdist.sweep` = '{sweep_id}'",
                              max_results=50_000)
    by_parent: dict[str, list] = defaultdict(list)
    for r in runs:
        by_parent[r.data.tags.get(PARENT_TAG, "")].append(r)
    names = {r.info.run_id: r.info.run_name for r in runs}
    out = []
    for r in runs:
        if r.data.tags.get(STAGE_TAG) != "finetune" or r.info.status != "FINISHED":
            continue
        p = r.data.params
        pretrained = _pretrained_as(names.get(r.data.tags.get(PARENT_TAG, ""), ""))
        ft = FineTune(r.info.run_id, pretrained, float(p["finetune.optim.lr"]),
                      float(p.get("setting.spurious_fraction", 0.0)), int(p["seed"]), dict(r.data.metrics),
                      start_value(client, r, "pt_acc"), start_value(client, r, "ft_acc"))
        ft.steps = int(p.get("finetune.optim.steps", 0))
        for key in START_KEYS:
            curve = _history(client, r.info.run_id, key) if key in r.data.metrics else []
            if curve:
                ft.start_metrics[key] = curve[0][1]
                ft.curves[key] = curve  # Tab. 5's 1K column is a point inside a 10K-step run
        for child in by_parent[r.info.run_id]:
            if child.info.status != "FINISHED":
                continue
            if child.data.tags.get(STAGE_TAG) == "reft":
                ft.reft_budgets[int(child.data.params["reft.budget"])] = child.data.metrics["pt_acc"]
            elif child.data.tags.get(STAGE_TAG) == "analysis":
                for key in child.data.metrics:
                    if key.startswith(ANALYSIS_PREFIXES):
                        ft.analysis[key] = _history(client, child.info.run_id, key)
        out.append(ft)
    return sorted(out, key=lambda f: (PRIOR_ORDER.get(f.prior, 9), f.prior, f.lr, f.c_tr, f.seed))


PRIOR_ORDER = {"low": 0, "medium": 1, "high": 2}


def grouped(fts: list[FineTune], key) -> dict:
    """Groups in first-seen order (collect() sorts priors low → high, then LR, C_Tr and seed)."""
    groups: dict = defaultdict(list)
    for ft in fts:
        groups[key(ft)].append(ft)
    return dict(groups)
