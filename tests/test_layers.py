"""Import direction between the layers of design.md, read from the source with `ast` (nothing is
imported): every import statement counts — top-level, inside functions, under `if TYPE_CHECKING:` —
so a circle cannot hide behind a function-local import. Plus a grep for setting branches outside
wrapperdist/settings/."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "wrapperdist"
SETTINGS_DIR = PACKAGE / "settings"


@dataclass(frozen=True)
class Import:
    importer: str  # wrapperdist.x.y
    target: str  # the module imported: `from a.b import c` is a.b.c where that is a module, else a.b
    path: Path
    line: int
    where: str  # "top", "function" or "typing" (under `if TYPE_CHECKING:`)

    def __str__(self) -> str:
        return f"{shown(self.path)}:{self.line} imports {self.target} ({self.where})"


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Module name -> file (a package by its __init__.py)."""
    names = {p: p.relative_to(package.parent).with_suffix("").parts for p in sorted(package.rglob("*.py"))}
    return {".".join(parts[:-1] if parts[-1] == "__init__" else parts): p for p, parts in names.items()}


def imports_in(source: str, importer: str, is_package: bool, known: set[str], path: Path) -> list[Import]:
    """Every import statement of one module, resolved to module names (relative ones too)."""
    found: list[Import] = []
    package = importer if is_package else importer.rpartition(".")[0]

    def visit(node: ast.AST, where: str) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(importer, alias.name, path, node.lineno, where) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if alias.name != "*" and candidate in known else base
                found.append(Import(importer, target, path, node.lineno, where))
        for child in ast.iter_child_nodes(node):
            guard = getattr(node, "test", None) if isinstance(node, ast.If) else None
            if getattr(guard, "id", getattr(guard, "attr", None)) == "TYPE_CHECKING" and child in node.body:
                visit(child, "typing")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, "function" if where == "top" else where)
            else:
                visit(child, where)

    visit(ast.parse(source), "top")
    return found


def all_imports(package: Path = PACKAGE) -> list[Import]:
    modules = package_modules(package)
    known = set(modules)
    found = [imp for name, path in modules.items()
             for imp in imports_in(path.read_text(), name, path.name == "__init__.py", known, path)]
    return list(dict.fromkeys(found))  # `from m import a, b`: one import of m


IMPORTS = all_imports()
MODULES = package_modules()


def internal_edges(imports: list[Import], known: set[str]) -> dict[str, dict[str, Import]]:
    """importer -> {internal module it causes to load -> the statement}. Importing a.b.c loads the
    packages a.b and a too; those the importer does not already sit in are edges as well."""
    graph: dict[str, dict[str, Import]] = {name: {} for name in known}
    for imp in imports:
        if imp.target not in known:
            continue
        parts = imp.target.split(".")
        for i in range(len(parts), 0, -1):
            loaded = ".".join(parts[:i])
            if imp.importer == loaded or imp.importer.startswith(loaded + "."):
                break  # the importer's own package: loaded before the importer ever runs
            if loaded in known:
                graph[imp.importer].setdefault(loaded, imp)
    return graph


def reached(graph, start: str) -> dict[str, str]:
    """Every node reachable from `start` in one step or more -> its predecessor on a shortest path."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return previous


def find_cycles(graph: dict[str, set[str]] | dict[str, dict[str, Import]]) -> list[list[str]]:
    """One shortest closed path per set of modules that reach each other (strongly connected)."""
    cycles, covered = [], set()
    for v in sorted(graph):
        back = reached(graph, v)
        if v in covered or v not in back:
            continue
        covered |= {w for w in back if v in reached(graph, w)}
        path = [v]
        while path[-1] != v or len(path) == 1:
            path.append(back[path[-1]])
        cycles.append(path[::-1])
    return cycles


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, Import]]) -> str:
    steps = [f"    {graph[a][b]}" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


SPECIFIC_SETTINGS = tuple(sorted(f"wrapperdist.settings.{d.name}" for d in SETTINGS_DIR.iterdir()
                                 if (d / "__init__.py").is_file()))
CORE = ("wrapperdist.models", "wrapperdist.train", "wrapperdist.mech")
RUNNERS = ("wrapperdist.sweep", "wrapperdist.tracking", "mlflow", "ray")
NAMES_A_SETTING = ("wrapperdist.settings.registry", "wrapperdist.config", "wrapperdist.confighelp")


def _config_may_import(module: str) -> bool:
    return (module.split(".")[0] in (*sys.stdlib_module_names, "pydantic", "pydantic_core", "yaml")
            or module in ("wrapperdist.schema", "wrapperdist.yamlio", "wrapperdist.overrides")  # stdlib + yaml only
            or any(module in (f"{s}.config", f"{s}.names") for s in SPECIFIC_SETTINGS))


@dataclass(frozen=True)
class Rule:
    says: str
    broken_by: Callable[[Import], bool]
    planted: Import  # an import that breaks it: the rule's own test that it can fail


RULES = {
    "resolves": Rule(
        "every wrapperdist module imported exists (none left behind by a move)",
        lambda i: _under(i.target, ("wrapperdist",)) and i.target not in MODULES,
        Import("wrapperdist.stages", "wrapperdist.data.tasks", PACKAGE / "stages.py", 1, "top")),
    "core": Rule(
        "models, train and mech never import sweep, tracking, settings, MLflow or Ray",
        lambda i: _under(i.importer, CORE) and _under(i.target, (*RUNNERS, "wrapperdist.settings")),
        Import("wrapperdist.models.gpt", "mlflow", PACKAGE / "models/gpt.py", 1, "function")),
    "config": Rule(
        "config and schema import only stdlib, pydantic, yaml, schema, yamlio, overrides and the settings' "
        "config/names modules",
        lambda i: _under(i.importer, ("wrapperdist.config", "wrapperdist.schema")) and not _config_may_import(i.target),
        Import("wrapperdist.config", "wrapperdist.settings.pcfg.grammar", PACKAGE / "config.py", 1, "top")),
    "settings": Rule(
        "nothing under settings imports sweep, tracking, MLflow or Ray",
        lambda i: _under(i.importer, ("wrapperdist.settings",)) and _under(i.target, RUNNERS),
        Import("wrapperdist.settings.pcfg.setting", "wrapperdist.tracking", PACKAGE / "settings/pcfg/setting.py", 1,
               "typing")),
    "specific": Rule(
        f"outside settings/, only {', '.join(NAMES_A_SETTING)} import a specific setting",
        lambda i: (not _under(i.importer, ("wrapperdist.settings", *NAMES_A_SETTING))
                   and _under(i.target, SPECIFIC_SETTINGS)),
        Import("wrapperdist.stages", "wrapperdist.settings.tracr.config", PACKAGE / "stages.py", 1, "function")),
}


def broken(rule: Rule, imports: list[Import]) -> list[str]:
    return [str(i) for i in imports if rule.broken_by(i)]


# -- the machinery can fail ------------------------------------------------------------------------

def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"a"}}
    assert sorted(map(tuple, find_cycles(graph))) == [("a", "b", "c", "a"), ("e", "e")]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []


def test_cycle_check_fires_on_a_planted_import():
    """stages imports models; a (function-local) import back from models closes a circle."""
    planted = Import("wrapperdist.models.gpt", "wrapperdist.stages", PACKAGE / "models/gpt.py", 1, "function")
    graph = internal_edges([*IMPORTS, planted], set(MODULES))
    assert "wrapperdist.models.gpt" in reached(graph, "wrapperdist.stages")
    assert any("wrapperdist.models.gpt" in c for c in find_cycles(graph))


def test_import_reader_sees_local_relative_and_typing_imports(tmp_path):
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import wrapperdist.sweep.plan as plan\n"
        "from . import sibling\n"
        "from ..models import gpt, GPT\n"
        "if TYPE_CHECKING:\n"
        "    from wrapperdist.config import ExperimentConfig\n"
        "def f():\n"
        "    from wrapperdist.tracking import Tracker\n"
        "    import mlflow.entities\n"
    )
    known = {"wrapperdist", "wrapperdist.mech", "wrapperdist.mech.sibling", "wrapperdist.models",
             "wrapperdist.models.gpt", "wrapperdist.sweep.plan", "wrapperdist.tracking", "wrapperdist.config"}
    found = {(i.target, i.where) for i in imports_in(source, "wrapperdist.mech.x", False, known, tmp_path / "x.py")}
    assert found == {("__future__", "top"), ("typing", "top"), ("wrapperdist.sweep.plan", "top"),
                     ("wrapperdist.mech.sibling", "top"), ("wrapperdist.models.gpt", "top"),
                     ("wrapperdist.models", "top"), ("wrapperdist.config", "typing"),
                     ("wrapperdist.tracking", "function"), ("mlflow.entities", "function")}


def test_the_tree_is_read():
    """Guards the rules below against passing on an empty or misread tree."""
    assert {"wrapperdist.config", "wrapperdist.stages", "wrapperdist.settings.registry"} <= MODULES.keys()
    assert len(SPECIFIC_SETTINGS) >= 3, SPECIFIC_SETTINGS
    assert any(i.importer == "wrapperdist.cli" and i.where == "function" for i in IMPORTS)
    assert not broken(RULES["config"], [Import("wrapperdist.config", t, PACKAGE / "config.py", 1, "top") for t in
                                        ("pathlib", "pydantic", "yaml", "wrapperdist.settings.pcfg.config")])


@pytest.mark.parametrize("name", RULES)
def test_layering_rule_can_fail(name):
    rule = RULES[name]
    assert broken(rule, [rule.planted]) == [str(rule.planted)]


# -- (i) no circles, (ii) layering ---------------------------------------------------------------

def test_no_import_cycle():
    graph = internal_edges(IMPORTS, set(MODULES))
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (every import statement counts):\n" + "\n".join(
        describe_cycle(c, graph) for c in cycles)


@pytest.mark.parametrize("name", RULES)
def test_layering(name):
    bad = broken(RULES[name], IMPORTS)
    assert not bad, f"{RULES[name].says}; broken by:\n" + "\n".join(bad)


# -- (iii) no setting branches ------------------------------------------------------------------------

BRANCHES = [
    re.compile(r"\bcfg\.(tracr|stories|pcfg)\b"),
    re.compile(r"\.(tracr|stories|pcfg)\s+is\s+(not\s+)?None"),
    re.compile(r"setting\.name\s*[!=]="),
    re.compile(r"\.name\s*[!=]=\s*['\"](pcfg|tracr|stories)['\"]"),
    re.compile(r"\bis_(tracr|stories|pcfg)\b"),
]


def _setting_classes() -> set[str]:
    """The classes the specific settings define (their config sections among them), read from source."""
    return {node.name for path in SETTINGS_DIR.rglob("*.py") if path.parent != SETTINGS_DIR
            for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)}


def _isinstance_names(call: ast.Call) -> set[str]:
    if not (isinstance(call.func, ast.Name) and call.func.id == "isinstance" and len(call.args) == 2):
        return set()
    kinds = call.args[1].elts if isinstance(call.args[1], ast.Tuple) else [call.args[1]]
    return {k.id if isinstance(k, ast.Name) else k.attr for k in kinds if isinstance(k, ast.Name | ast.Attribute)}


def setting_branches(paths: list[Path], classes: set[str]) -> list[str]:
    """`file:line: text` of every setting branch: a BRANCHES match, or an isinstance over `classes`."""
    found = []
    for path in paths:
        text = path.read_text()
        found += [f"{shown(path)}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                  if any(p.search(line) for p in BRANCHES)]
        found += [f"{shown(path)}:{node.lineno}: isinstance over {sorted(_isinstance_names(node) & classes)}"
                  for node in ast.walk(ast.parse(text))
                  if isinstance(node, ast.Call) and _isinstance_names(node) & classes]
    return found


def test_branch_grep_catches_a_planted_branch(tmp_path):
    planted = tmp_path / "stage.py"
    planted.write_text("if cfg.tracr is not None:\n    pass\n"
                       "if isinstance(s, (int, sections.PCFGSection)):\n    pass\n"
                       "if setting.name == 'pcfg':\n    pass\n"
                       "if s.stories is None:\n    pass\n"
                       "ok = cfg.setting.name, isinstance(s, int), cfg.setting.pretrain_part()\n")
    found = setting_branches([planted], {"PCFGSection"})
    assert sorted(int(line.split(":")[1]) for line in found) == [1, 3, 5, 7], found


def test_no_setting_branches_outside_settings():
    classes = _setting_classes()
    assert {"PCFGSection", "TracrSection"} <= classes, classes
    outside = [p for p in sorted(PACKAGE.rglob("*.py")) if SETTINGS_DIR not in p.parents]
    found = setting_branches(outside, classes)
    assert not found, "setting branches outside wrapperdist/settings/:\n" + "\n".join(found)
