# `make demo`: install, then run the whole pipeline on the embedded demo data.
# `make test`: install, then run the test suite (what CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test bench

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	MIRAM_PRESET=demo $(PY) train.py

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/pip install --quiet -r bench/requirements.txt
	$(PY) bench/train_throughput.py
