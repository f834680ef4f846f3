"""The sweep as a DAG of stage nodes, each keyed by a content hash of what determines it:
pretrain (one per distinct pretraining config) → fine-tune → analysis and reFT at each revival
budget. Equal keys are one node, which is how a 3 priors × 3 LRs grid runs 3 pretrains."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from wrapperdist.analyze import control_config
from wrapperdist.config import ExperimentConfig
from wrapperdist.identity import Kind, node_key
from wrapperdist.sweep.spec import Sweep

METRIC_PREFIX = "m/"  # stage metrics travel through Tune under this prefix, apart from Tune's own keys


@dataclass(frozen=True)
class Node:
    kind: Kind
    key: str
    parent: str | None  # the node whose output this one starts from
    name: str  # MLflow run name
    experiment: dict[str, Any] = field(hash=False, compare=False)
    budget: int | None = None
    role: str = "main"  # or "scr_control": the Scr.+FT control's pretraining
    requires: tuple[str, ...] = ()  # other nodes whose outputs it reads

    def config(self) -> ExperimentConfig:
        return ExperimentConfig.model_validate(self.experiment)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Node:
        return cls(**{**data, "requires": tuple(data.get("requires", ()))})


def node_report(node: Node, with_config: bool = False) -> dict[str, Any]:
    """A node's identity as trials report it (strings and numbers only, as Tune results need)."""
    report = {"node_key": node.key, "node_kind": node.kind, "node_parent": node.parent or "",
              "node_name": node.name, "node_role": node.role, "node_budget": node.budget or 0}
    if with_config:
        report["node_experiment"] = json.dumps(node.experiment)
    return report


def with_metrics(report: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    return {**report, **{f"{METRIC_PREFIX}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}}


def _short(cfg: ExperimentConfig) -> str:
    if cfg.stories is not None:
        corpus = f"stories without {cfg.stories.feature}" if cfg.stories.pretrain_without_feature else "stories"
        return f"{corpus} seed={cfg.seed}"
    if cfg.tracr is not None:  # compiled: the seed only enters at fine-tuning
        return f"tracr={cfg.tracr.program}({cfg.tracr.pretrain_target})"
    prior = cfg.pretrain.data.prior
    vector = ",".join(f"{p:g}" for p in cfg.pretrain.data.prior_vector())
    shown = prior if isinstance(prior, str) else f"({vector})"
    return f"prior={shown} seed={cfg.seed}"


def _ft(cfg: ExperimentConfig) -> str:
    ft = cfg.finetune
    if cfg.tracr is not None:
        return f"lr={ft.optim.lr:g} to={cfg.tracr.finetune_target} {_short(cfg)} seed={cfg.seed}"
    if cfg.stories is not None:
        return f"lr={ft.optim.lr:g} delete={cfg.stories.feature} by={cfg.stories.deletion} {_short(cfg)}"
    return f"lr={ft.optim.lr:g} C_Tr={ft.spurious_fraction:g} {_short(cfg)}"


def pretrain_node(cfg: ExperimentConfig, role: str = "main") -> Node:
    control = "pt Not-in-PT control" if cfg.stories is not None else "pt Scr.+FT control"
    label = "pt" if role == "main" else control
    return Node("pretrain", node_key("pretrain", cfg), None, f"{label} {_short(cfg)}",
                cfg.model_dump(mode="json"), role=role)


def finetune_node(cfg: ExperimentConfig) -> Node:
    return Node("finetune", node_key("finetune", cfg), node_key("pretrain", cfg), f"ft {_ft(cfg)}",
                cfg.model_dump(mode="json"))


def downstream_nodes(cfg: ExperimentConfig, budgets: list[int], analyze: bool) -> list[Node]:
    """Analysis and reFT nodes hanging off one fine-tune node."""
    ft_key = node_key("finetune", cfg)
    data = cfg.model_dump(mode="json")
    nodes = []
    if analyze:
        control = node_key("pretrain", control_config(cfg))
        nodes.append(Node("analysis", node_key("analysis", cfg), ft_key, f"analysis {_ft(cfg)}", data,
                          requires=(node_key("pretrain", cfg), control)))
    for b in budgets:
        nodes.append(Node("reft", node_key("reft", cfg, b), ft_key, f"reft budget={b} {_ft(cfg)}", data, budget=b))
    return nodes


@dataclass
class Plan:
    pretrain: list[Node]
    finetune: list[Node]  # empty in search mode: the search creates them
    downstream: list[Node]  # analysis + reFT of the grid's fine-tunes

    def counts(self) -> dict[str, int]:
        return {"pretrain": len(self.pretrain), "finetune": len(self.finetune), "downstream": len(self.downstream)}


def _unique(nodes: list[Node]) -> list[Node]:
    seen: dict[str, Node] = {}
    for n in nodes:
        seen.setdefault(n.key, n)
    return list(seen.values())


def make_plan(sweep: Sweep) -> Plan:
    spec = sweep.spec
    pre = [pretrain_node(cfg) for cfg in sweep.points]
    if spec.analyze:
        pre += [pretrain_node(control_config(cfg), role="scr_control") for cfg in sweep.points]
    if spec.search:
        return Plan(_unique(pre), [], [])
    ft = [finetune_node(cfg) for cfg in sweep.points]
    down = [n for cfg in sweep.points for n in downstream_nodes(cfg, spec.revival_budgets, spec.analyze)]
    return Plan(_unique(pre), _unique(ft), _unique(down))
