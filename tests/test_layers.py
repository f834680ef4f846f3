"""The layers of docs/design.md. The import contracts live in pyproject.toml ([tool.importlinter])
and `lint-imports` checks them (also in `make test`); this file runs it on the tree and on a copy with
a planted violation, so a contract that cannot fail is caught too. What import-linter cannot express
stays here: no setting branches outside wrapperdist/settings/ (a grep and an isinstance scan)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "wrapperdist"
SETTINGS_DIR = PACKAGE / "settings"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports over the package found in `tree` (its own pyproject.toml and wrapperdist/)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}  # ahead of the editable install: the copy is analysed
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_import_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in done.stdout


def test_a_planted_violation_breaks_its_contract(tmp_path):
    """An MLflow import in the training loop: the core contract must name it, with its line."""
    shutil.copytree(PACKAGE, tmp_path / "wrapperdist", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    loop = tmp_path / "wrapperdist" / "train" / "loop.py"
    loop.write_text(loop.read_text().replace("import torch\n", "import mlflow  # planted\nimport torch\n", 1))
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout[-4000:]
    assert "wrapperdist.train is not allowed to import mlflow" in done.stdout
    assert "wrapperdist.train.loop -> mlflow" in done.stdout


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


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_setting_contract_covers_every_module_outside_the_settings():
    """The "only the registry names a specific setting" contract lists its sources by hand: a module
    added outside settings/<setting>/ and left off the list would escape it."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    contract = next(c for c in contracts if c["name"].startswith("outside settings/"))
    specific = set(contract["forbidden_modules"])
    # the registry maps names to settings, config registers their config sections, confighelp reads them
    allowed = {"wrapperdist", "wrapperdist.config", "wrapperdist.confighelp", "wrapperdist.settings",
               "wrapperdist.settings.registry"}
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    outside = {m for m in modules - allowed if not any(m == s or m.startswith(s + ".") for s in specific)}
    listed = set(contract["source_modules"])
    covered = {m for m in outside if any(m == s or m.startswith(s + ".") for s in listed)}
    assert covered == outside, f"add to the contract's source_modules: {sorted(outside - covered)}"


def test_every_wrapperdist_import_names_a_module_that_exists():
    """import-linter drops an import of an internal module that does not exist (grimp cannot place it),
    so a stale `from wrapperdist.x import y` would pass the contracts and fail only when run."""
    import importlib.util

    missing = []
    for folder in ("wrapperdist", "analysis", "scripts", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    if name.split(".")[0] == "wrapperdist" and importlib.util.find_spec(name) is None:
                        missing.append(f"{shown(path)}:{node.lineno} {name}")
    assert not missing, missing
