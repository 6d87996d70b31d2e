# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv/ when it is missing and reuse it otherwise.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned: on this platform these builds lie on local disk;
	# any other release would download several GB.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Every shipped model on unseen random inits: one G.pt step vs Adam / PPO; a table, plots in data/demo/.
demo: $(STAMP)
	$(VENV)/bin/gpt-params demo --out data/demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check gpt_params checkpoint_zoo train eval benchmarks tests
