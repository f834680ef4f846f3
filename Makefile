# Two commands do all set-up on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Installed once per change of pyproject.toml (torch is pinned to the CPU build on disk there).
STAMP := $(VENV)/.installed

.PHONY: install demo tracr stories claims test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "wrapperdist needs Python >= 3.11; '$(PYTHON)' is $$($(PYTHON) -V 2>&1 || echo missing)." \
	       "Run: make PYTHON=python3.11 (or newer). No .venv was created." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev,ray,tracr]'
	touch $(STAMP)

install: $(STAMP)

## The main job: the headline reproduction on the paper's PCFG protocol (sweeps/demo.yaml: the low
## prior x 3 seeds at eta_M with C_Tr = 1, analysed), a local Ray sweep recorded in ./mlflow.db,
## then the paper's figures and tables read back from MLflow into reports/headline/.
demo: install
	$(BIN)/wrapperdist sweep sweeps/demo.yaml
	$(BIN)/python analysis/summarize.py --experiment wrapperdist
	$(BIN)/python analysis/report.py --experiment wrapperdist --out reports
	$(BIN)/python analysis/runs_data.py --sweep-name headline --out reports/headline/runs.jsonl
	$(BIN)/python analysis/claims.py reports/headline/runs.jsonl --out reports/headline/claims.md
	@echo
	@echo "Report:    $(CURDIR)/reports/headline/report.md (figures beside it; also on the sweep's MLflow run)"
	@echo "Claims:    $(CURDIR)/reports/headline/claims.md (this run's 3 seeds; docs/claims.md has the committed ones)"

## The Tracr setting: compiled Counter (C_Tr x the four LRs) and Max-identifier (5th -> 6th largest),
## analysed and revived; Fig. 10; reports under reports/tracr-counter/ and reports/tracr-max/.
tracr: install
	$(BIN)/wrapperdist sweep sweeps/tracr_counter.yaml
	$(BIN)/python analysis/report.py --experiment wrapperdist --out reports
	$(BIN)/wrapperdist sweep sweeps/tracr_counter_reft.yaml
	$(BIN)/python analysis/report.py --experiment wrapperdist --out reports
	$(BIN)/python analysis/tracr_attention.py --out reports/tracr-counter
	$(BIN)/wrapperdist sweep sweeps/tracr_max.yaml
	$(BIN)/python analysis/report.py --experiment wrapperdist --out reports
	for s in tracr-counter tracr-counter-reft tracr-max; do \
	  $(BIN)/python analysis/runs_data.py --sweep-name $$s --out reports/$$s/runs.jsonl || exit 1; done

## The TinyStories setting: deleting "Twist" from a small LM with the paper's three protocols (F, F+R,
## F+MM) x 2 LRs x 3 seeds, analysed and revived (offline procedural corpus; set stories.path for the
## real files); the Tab. 1 analogue and the probes in reports/stories/table.md. The per-seed references
## are memoised in the sweep's stage store (runs/store/memo-*).
stories: install
	$(BIN)/wrapperdist sweep sweeps/tinystories_twist.yaml
	$(BIN)/python analysis/stories_table.py --experiment wrapperdist --out reports/stories/table.md
	$(BIN)/python analysis/runs_data.py --sweep-name tinystories-twist --out reports/stories/runs.jsonl

## The claims file and the per-setting result tables from the committed per-seed data
## (docs/results/*/runs.jsonl, exported by the targets above and copied there): docs/claims.md, which
## the README embeds, and the tables of docs/pcfg.md, docs/tracr.md, docs/stories.md. Seconds; no training.
claims: install
	$(BIN)/python analysis/claims.py docs/results/*/runs.jsonl --out docs/claims.md --embed README.md
	$(BIN)/python analysis/results_pages.py

## Lint and the import contracts (pyproject.toml [tool.importlinter]), then the whole test suite.
test: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-logo
	$(BIN)/pytest

## Speed figures quoted in the notes (not timed tests).
bench: install
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_overlap.py experiments/cpu_small.yaml
	$(BIN)/python benchmarks/bench_cluster.py

clean:
	rm -rf $(VENV) runs mlartifacts mlflow.db .pytest_cache .ruff_cache
