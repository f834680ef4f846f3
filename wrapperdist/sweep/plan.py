"""The sweep as a DAG of stage nodes, each keyed by a content hash of what determines it:
pretrain (one per distinct pretraining config) → fine-tune → analysis and reFT at each revival
budget. Equal keys are one node, which is how a 3 priors × 3 LRs grid runs 3 pretrains."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wrapperdist.config import ExperimentConfig
from wrapperdist.identity import node_key
from wrapperdist.setting import StageKind
from wrapperdist.settings.registry import setting_for
from wrapperdist.sweep.spec import Sweep

METRIC_PREFIX = "m/"  # stage metrics travel through Tune under this prefix, apart from Tune's own keys


@dataclass(frozen=True)
class Node:
    kind: StageKind
    key: str
    parent: str | None  # the node whose output this one starts from
    name: str  # MLflow run name
    config: ExperimentConfig = field(hash=False, compare=False)
    budget: int | None = None
    role: str = "main"  # or "control": the setting's control model's pretraining
    requires: tuple[str, ...] = ()  # other nodes whose outputs it reads


def node_report(node: Node, with_config: bool = False) -> dict[str, Any]:
    """A node's identity as trials report it (strings and numbers only, as Tune results need)."""
    report = {"node_key": node.key, "node_kind": node.kind, "node_parent": node.parent or "",
              "node_name": node.name, "node_role": node.role, "node_budget": node.budget or 0}
    if with_config:
        report["node_experiment"] = node.config.model_dump_json()
    return report


def node_from_report(report: dict[str, Any]) -> Node:
    """The node a report describes (it must carry the config: `node_report(..., with_config=True)`)."""
    return Node(report["node_kind"], report["node_key"], report["node_parent"] or None, report["node_name"],
                ExperimentConfig.model_validate_json(report["node_experiment"]), report["node_budget"] or None,
                report["node_role"])


def with_metrics(report: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    return {**report, **{f"{METRIC_PREFIX}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}}


def pretrain_node(cfg: ExperimentConfig, role: str = "main") -> Node:
    setting = setting_for(cfg)
    label = "pt" if role == "main" else f"pt {setting.control_label(cfg)}"
    return Node("pretrain", node_key("pretrain", setting, cfg), None, f"{label} {setting.run_label(cfg, 'pretrain')}",
                cfg, role=role)


def finetune_node(cfg: ExperimentConfig) -> Node:
    setting = setting_for(cfg)
    return Node("finetune", node_key("finetune", setting, cfg), node_key("pretrain", setting, cfg),
                f"ft {setting.run_label(cfg, 'finetune')}", cfg)


def downstream_nodes(cfg: ExperimentConfig, budgets: list[int], analyze: bool) -> list[Node]:
    """Analysis and reFT nodes hanging off one fine-tune node."""
    setting = setting_for(cfg)
    ft_key = node_key("finetune", setting, cfg)
    label = setting.run_label(cfg, "finetune")
    nodes = []
    if analyze:
        control = node_key("pretrain", setting, setting.control_config(cfg))
        nodes.append(Node("analysis", node_key("analysis", setting, cfg), ft_key, f"analysis {label}", cfg,
                          requires=(node_key("pretrain", setting, cfg), control)))
    for b in budgets:
        nodes.append(Node("reft", node_key("reft", setting, cfg, b), ft_key, f"reft budget={b} {label}", cfg,
                          budget=b))
    return nodes


@dataclass
class Plan:
    pretrain: list[Node]
    finetune: list[Node]  # empty in search mode: the search creates them
    downstream: list[Node]  # analysis + reFT of the grid's fine-tunes

    def counts(self) -> dict[str, int]:
        return {"pretrain": len(self.pretrain), "finetune": len(self.finetune), "downstream": len(self.downstream)}


def unique(nodes: list[Node]) -> list[Node]:
    seen: dict[str, Node] = {}
    for n in nodes:
        seen.setdefault(n.key, n)
    return list(seen.values())


def make_plan(sweep: Sweep) -> Plan:
    spec = sweep.spec
    pre = [pretrain_node(cfg) for cfg in sweep.points]
    if spec.analyze:
        pre += [pretrain_node(setting_for(cfg).control_config(cfg), role="control") for cfg in sweep.points]
    if spec.search:
        return Plan(unique(pre), [], [])
    ft = [finetune_node(cfg) for cfg in sweep.points]
    down = [n for cfg in sweep.points for n in downstream_nodes(cfg, spec.revival_budgets, spec.analyze)]
    return Plan(unique(pre), unique(ft), unique(down))
