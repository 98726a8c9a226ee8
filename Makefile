# rsprompt: two commands do everything on a fresh machine.
#   make demo        train prompts on a real frozen encoder and write a QGIS-ready map (creates .venv)
#   make test        lint and run the FULL test suite: slow, QGIS and doctests included (what CI runs)
#   make test-fast   lint and run the everyday subset (slow tests left out)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv test test-fast test-slow lint demo docs clean

DEMO_OUT ?= demo_out

# Re-runnable: replaces the outputs of an earlier demo in $(DEMO_OUT).
demo: venv
	$(VENV)/bin/rsprompt demo --out $(DEMO_OUT) --overwrite

venv:
	@bash scripts/setup_venv.sh $(VENV)

lint: venv
	$(VENV)/bin/ruff check rsprompt tests scripts

test: lint
	$(PY) -m pytest --durations=15

test-fast: lint
	$(PY) -m pytest -m "not slow"

test-slow: venv
	$(PY) -m pytest -m slow --durations=0

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or reference fails.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
