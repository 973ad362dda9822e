# make run   : the main job on the embedded CIFAR-10 subset (no network, no GPU)
# make test  : the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/eoq: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(BIN)/eoq

install: $(BIN)/eoq

run: install
	$(BIN)/eoq train --data embedded --model resnet20 --norm fixup --preset eoq --epochs 3 --out runs/quickstart --threads 2

test: install
	$(BIN)/python -m pytest -q

.PHONY: install run test
