"""The result tables of the per-setting pages (docs/pcfg.md, docs/tracr.md, docs/stories.md), generated
from the committed per-seed data (docs/results/<sweep>/runs.jsonl, written by analysis/runs_data.py)
and put between each page's `<!-- results:start -->` / `<!-- results:end -->` markers. The same
table code as the MLflow reports (report.py, tab5.py, tracr_tables.py, stories_table.py), fed from
the files instead of a store only one machine has. `make claims` runs it; tests/test_docs.py fails
when a page is stale.

    python analysis/results_pages.py [--check]"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
import stories_table  # noqa: E402
import tab5  # noqa: E402
import tracr_tables  # noqa: E402
from claims import unique  # noqa: E402
from runs_data import load  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def sweeps_of(setting: str, root: Path = ROOT) -> dict[str, list]:
    """sweep folder name -> its rows, for every committed runs.jsonl of `setting`."""
    out = {}
    for path in sorted((root / "docs" / "results").glob("*/runs.jsonl")):
        rows = [r for r in unique(load(path)) if r["setting"] == setting]
        if rows:
            out[path.parent.name] = rows
    return out


def _source(name: str, rows: list) -> str:
    machines = sorted({f"{r['machine'].get('cpu', '?')} ({r['machine'].get('blas', '?')}, "
                       f"{r['machine'].get('device', '?')})" for r in rows if r.get("machine")})
    seeds = sorted({r["ft"].seed for r in rows})
    return (f"From `docs/results/{name}/runs.jsonl`: {len(rows)} fine-tunes, seeds {', '.join(map(str, seeds))}; "
            f"machine: {', '.join(machines) or 'not recorded'}.")


def pcfg(root: Path = ROOT) -> list[str]:
    lines = []
    everything = [r["ft"] for r in unique([r for rows in sweeps_of("pcfg", root).values() for r in rows])]
    lengths = tab5.length_table(everything)
    if lengths:
        lines += ["### The paper's fine-tuning length beside the demo's", "",
                  "The demo fine-tunes for 1K steps with a whole cosine schedule; Tab. 5's 1K column is a point "
                  "inside a 10K-step run (2K warm-up). Both, for the cells run at 10K:", "", *lengths]
    for name, rows in sweeps_of("pcfg", root).items():
        fts = [r["ft"] for r in rows]
        body = report.markdown(name, fts, None).split("\n", 2)[2]  # without its "# Sweep" title
        lines += [f"### `{name}`", "", _source(name, rows), "", "Tab. 5 beside the paper's (paper / ours, %):", "",
                  *tab5.tables(fts), "", "Per cell, with the analyses (fractions):", "", body.strip(), ""]
    return lines


def _reft_label(params: dict) -> str:
    if "analysis.reft.lr" in params and params["analysis.reft.lr"] not in ("None", ""):
        return params["analysis.reft.lr"]
    return f"{params.get('analysis.reft.lr_factor', '?')} × FT"


def tracr(root: Path = ROOT) -> list[str]:
    lines = []
    for name, rows in sweeps_of("tracr", root).items():
        finetunes, analyses = {}, []
        for r in rows:
            p, ft = r["params"], r["ft"]
            key = (p.get("setting.program", "?"), ft.lr, ft.c_tr)
            finetunes[key] = ft.metrics
            if ft.analysis:
                analyses.append(((*key, _reft_label(p)), {k: v[-1][1] for k, v in ft.analysis.items() if v}))
        lines += [f"### `{name}`", "", _source(name, rows), "", "Accuracy (%; Tab. 3's analogue):", "",
                  *tracr_tables.accuracy_table(finetunes), ""]
        if analyses:
            lines += ["Analyses:", "", *tracr_tables.analysis_table(analyses), ""]
    return lines


def _as_run(row) -> SimpleNamespace:
    """A committed row in the shape stories_table reads from MLflow (params; last value per metric)."""
    ft = row["ft"]
    metrics = {**ft.metrics, **{k: v[-1][1] for k, v in ft.analysis.items() if v}}
    return SimpleNamespace(data=SimpleNamespace(params={**row["params"], "seed": str(ft.seed)}, metrics=metrics))


def stories(root: Path = ROOT) -> list[str]:
    lines = []
    for name, rows in sweeps_of("stories", root).items():
        analysed = [r for r in rows if r["ft"].analysis]
        lines += [f"### `{name}`", "", _source(name, rows), "", *stories_table.tables([_as_run(r) for r in analysed]),
                  ""]
    return lines


PAGES: dict[str, Callable[[Path], list[str]]] = {"docs/pcfg.md": pcfg, "docs/tracr.md": tracr,
                                                 "docs/stories.md": stories}


def rendered(page: str, root: Path = ROOT) -> str:
    """The page with its results block regenerated."""
    text = (root / page).read_text()
    if START not in text or END not in text:
        raise ValueError(f"{page}: no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    lines = PAGES[page](root) or ["No committed per-seed data for this setting yet."]
    body = "\n".join(["## Results from the committed data", "",
                      "Generated by `python analysis/results_pages.py` (run by `make claims`); do not edit by "
                      "hand. Floors under each table: the modal answer and a random init (what an accuracy "
                      "must beat).", "", *lines]).rstrip()
    return f"{head}{START}\n{body}\n{END}{tail}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only say which pages are stale (exit 1 if any)")
    args = p.parse_args()
    stale = []
    for page in PAGES:
        text = rendered(page)
        if text != (ROOT / page).read_text():
            stale.append(page)
            if not args.check:
                (ROOT / page).write_text(text)
    print(("stale: " if args.check else "regenerated: ") + (", ".join(stale) or "none"))
    sys.exit(1 if args.check and stale else 0)


if __name__ == "__main__":
    main()
