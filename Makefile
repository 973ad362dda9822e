# make run   : the main job, end to end on the embedded CIFAR-10 subset (no network, no GPU, minutes):
#              trains fp32+BN, fp32+Fixup and 8-bit EOQ briefly, measures isometry and quantization error,
#              counts the cost, and writes reports/quickstart/REPORT.md with its figures
# make test  : the test suite (CI runs exactly this through .ci/run)
# make lab   : the notebooks in JupyterLab with the project's environment (installs the [lab] extra)
# make notebooks : executed copies of the notebooks (figures and tables) in reports/notebooks/
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
Q := runs/quickstart
TRAIN := $(BIN)/eoq train --data embedded --model resnet20 --epochs 3 --threads 2 --no-progress

$(BIN)/eoq: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -c "from eoq import kernels; kernels.load()"    # compile the C++ kernels once (cached)
	touch $(BIN)/eoq

install: $(BIN)/eoq

run: install
	rm -rf $(Q)
	$(TRAIN) --norm bn --preset fp32 --out $(Q)/bn_fp32
	$(TRAIN) --norm fixup --preset fp32 --out $(Q)/fixup_fp32
	$(TRAIN) --norm fixup --preset eoq --qstats-every 20 --out $(Q)/fixup_eoq
	$(BIN)/python -m analysis.isometry_experiment --data embedded --depths 20 32 --steps 20 --images 16 \
	    --threads 2 --out $(Q)/isometry
	$(BIN)/eoq report $(Q)/bn_fp32 $(Q)/fixup_fp32 $(Q)/fixup_eoq --isometry $(Q)/isometry \
	    --qstats $(Q)/fixup_eoq --out reports/quickstart --title "Quickstart report (embedded CIFAR-10 subset, 3 epochs)"

# two pytest workers (pytest-xdist), one per core: much of the suite is single-threaded Python and
# subprocesses; work stealing, so that a worker that runs out of tests takes over the other's last
# ones instead of idling; PYTEST_ARGS adds options, e.g. PYTEST_ARGS="-n 0" for one process
PYTEST_ARGS ?=
test: install
	$(BIN)/python -m pytest -q -n 2 --dist worksteal $(PYTEST_ARGS)

LAB_ARGS ?=
lab: install
	$(BIN)/pip install -q -c constraints.txt -e '.[lab]'
	$(BIN)/python -m jupyterlab --notebook-dir notebooks --allow-root $(LAB_ARGS)

notebooks: install
	$(BIN)/python -m analysis.notebooks

.PHONY: install run test lab notebooks
