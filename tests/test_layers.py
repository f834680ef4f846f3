"""Import direction between the layers of design.md, read from the source with `ast` (nothing is
imported): every import statement counts — top-level, inside functions, under `if TYPE_CHECKING:` —
so a circle cannot hide behind a function-local import. Plus a grep for setting branches outside
wrapperdist/settings/."""

from __future__ import annotations

import ast
import re
import sys
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


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


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
            if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
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


def strongly_connected(graph) -> list[list[str]]:
    """The strongly connected components of `graph` (node -> successors) that hold a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graphs are small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [sorted(c) for c in components]


def find_cycles(graph: dict[str, set[str]] | dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle (a closed path of nodes) per strongly connected component that has one."""
    return [_cycle_in(c, graph) for c in strongly_connected(graph)]


def _cycle_in(component: list[str], graph) -> list[str]:
    """A closed path start -> ... -> start inside one strongly connected component (BFS)."""
    members, start = set(component), component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{component} is not strongly connected")


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, Import]]) -> str:
    steps = [f"    {graph[a][b]}" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(importers: tuple[str, ...], allowed=None, forbidden: tuple[str, ...] = ()) -> list[str]:
    """Imports by modules under `importers` that hit `forbidden`, or that `allowed` (a predicate on
    the imported module's name) refuses."""
    bad = []
    for imp in IMPORTS:
        if not any(_within(imp.importer, p) for p in importers):
            continue
        if any(_within(imp.target, f) for f in forbidden) or (allowed is not None and not allowed(imp.target)):
            bad.append(str(imp))
    return bad


SPECIFIC_SETTINGS = tuple(sorted(f"wrapperdist.settings.{d.name}" for d in SETTINGS_DIR.iterdir()
                                 if (d / "__init__.py").is_file()))


# -- the machinery can fail ------------------------------------------------------------------------

def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"a"}}
    cycles = find_cycles(graph)
    assert sorted(map(tuple, cycles)) == [("a", "b", "c", "a"), ("e", "e")]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []


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


# -- (i) no circles ----------------------------------------------------------------------------------

def test_every_internal_import_resolves():
    """An import of a wrapperdist module that no longer exists (e.g. one moved by the refactor)."""
    missing = [str(i) for i in IMPORTS if _within(i.target, "wrapperdist") and i.target not in MODULES]
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_no_import_cycle():
    graph = internal_edges(IMPORTS, set(MODULES))
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (every import statement counts):\n" + "\n".join(
        describe_cycle(c, graph) for c in cycles)


# -- (ii) layering -----------------------------------------------------------------------------------

def test_core_layers_know_nothing_of_sweep_tracking_pipeline_or_settings():
    bad = violations(("wrapperdist.models", "wrapperdist.train", "wrapperdist.mech"),
                     forbidden=("wrapperdist.sweep", "wrapperdist.tracking", "wrapperdist.pipeline",
                                "wrapperdist.settings", "mlflow", "ray"))
    assert not bad, "\n".join(bad)


def _config_may_import(module: str) -> bool:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in ("pydantic", "pydantic_core", "yaml"):
        return True
    if module == "wrapperdist.schema":
        return True
    return any(module in (f"{s}.config", f"{s}.names") for s in SPECIFIC_SETTINGS)


def test_config_imports_only_pydantic_yaml_and_setting_sections():
    bad = violations(("wrapperdist.config", "wrapperdist.schema"), allowed=_config_may_import)
    assert not bad, "\n".join(bad)


def test_settings_know_nothing_of_sweep_tracking_or_pipeline():
    bad = violations(("wrapperdist.settings",), forbidden=("wrapperdist.sweep", "wrapperdist.tracking",
                                                           "wrapperdist.pipeline", "mlflow", "ray"))
    assert not bad, "\n".join(bad)


def test_only_the_registry_and_config_name_a_specific_setting():
    may = {"wrapperdist.settings.registry", "wrapperdist.config", "wrapperdist.confighelp"}
    bad = [str(i) for i in IMPORTS
           if not _within(i.importer, "wrapperdist.settings") and i.importer not in may
           and any(_within(i.target, s) for s in SPECIFIC_SETTINGS)]
    assert not bad, "\n".join(bad)


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
        for number, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in BRANCHES):
                found.append(f"{shown(path)}:{number}: {line.strip()}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and _isinstance_names(node) & classes:
                found.append(f"{shown(path)}:{node.lineno}: isinstance over "
                             f"{sorted(_isinstance_names(node) & classes)}")
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


@pytest.mark.parametrize("rule", ["models", "config", "settings", "specific"])
def test_layer_rules_fire_on_a_planted_import(rule, monkeypatch):
    """Each layering rule fails when its forbidden import is planted in the graph it reads."""
    planted = {
        "models": Import("wrapperdist.models.gpt", "mlflow", PACKAGE / "models/gpt.py", 1, "function"),
        "config": Import("wrapperdist.config", "torch", PACKAGE / "config.py", 1, "top"),
        "settings": Import("wrapperdist.settings.pcfg.setting", "wrapperdist.tracking",
                           PACKAGE / "settings/pcfg/setting.py", 1, "typing"),
        "specific": Import("wrapperdist.stages", "wrapperdist.settings.tracr.config", PACKAGE / "stages.py", 1,
                           "function"),
    }[rule]
    test = {
        "models": test_core_layers_know_nothing_of_sweep_tracking_pipeline_or_settings,
        "config": test_config_imports_only_pydantic_yaml_and_setting_sections,
        "settings": test_settings_know_nothing_of_sweep_tracking_or_pipeline,
        "specific": test_only_the_registry_and_config_name_a_specific_setting,
    }[rule]
    clean = [i for i in IMPORTS if str(i) != str(planted)]
    monkeypatch.setitem(globals(), "IMPORTS", [*clean, planted])
    with pytest.raises(AssertionError, match=re.escape(str(planted))):
        test()


def test_cycle_check_fires_on_a_planted_import():
    """models is imported by stages; a (function-local) import back from models closes a circle."""
    planted = Import("wrapperdist.models.gpt", "wrapperdist.stages", PACKAGE / "models/gpt.py", 1, "function")
    graph = internal_edges([*IMPORTS, planted], set(MODULES))
    assert any({"wrapperdist.models.gpt", "wrapperdist.stages"} <= set(c) for c in strongly_connected(graph))


def test_missing_module_check_fires_on_a_planted_import(monkeypatch):
    planted = Import("wrapperdist.stages", "wrapperdist.data.tasks", PACKAGE / "stages.py", 1, "top")
    monkeypatch.setitem(globals(), "IMPORTS", [*IMPORTS, planted])
    with pytest.raises(AssertionError, match=re.escape(str(planted))):
        test_every_internal_import_resolves()
