"""The generated docs are what their generators print now, and nothing in the repository points at
material outside it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import config_reference  # noqa: E402


def test_config_reference_is_generated_from_the_models():
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == config_reference.render(), "run: python scripts/config_reference.py > docs/config.md"
    # every leaf field a user can set is described (the setting's `name` is its own description)
    undescribed = [line for line in committed.splitlines() if line.endswith("|  |") and "`setting.name`" not in line]
    assert not undescribed, undescribed


def test_no_tracked_file_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = [path for path in tracked if (ROOT / path).is_file() and path != "tests/test_docs.py"
               and "../shared" in (ROOT / path).read_text(errors="ignore")]
    assert not outside, f"files that cite ../shared, which a user of the repository does not have: {outside}"


def test_claims_file_and_readme_are_generated_from_the_committed_data(monkeypatch):
    """docs/claims.md is what `make claims` writes from docs/results/*/runs.jsonl, and the README
    embeds that same table: a hand edit, or data committed without regenerating, fails here."""
    sys.path.insert(0, str(ROOT / "analysis"))
    import claims

    monkeypatch.chdir(ROOT)
    paths = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docs/results/*/runs.jsonl"))
    assert paths, "no committed per-seed data"
    text = claims.generate(paths)
    assert (ROOT / "docs" / "claims.md").read_text() == text, "run: make claims"
    readme = (ROOT / "README.md").read_text()
    assert claims.embedded(readme, text) == readme, "run: make claims (the README's table is stale)"


def test_setting_pages_carry_the_tables_of_the_committed_data():
    """docs/pcfg.md, docs/tracr.md and docs/stories.md hold what analysis/results_pages.py generates
    from docs/results/*/runs.jsonl (`make claims` regenerates them)."""
    sys.path.insert(0, str(ROOT / "analysis"))
    import results_pages

    for page in results_pages.PAGES:
        assert results_pages.rendered(page) == (ROOT / page).read_text(), f"{page} is stale: run make claims"
