#!/usr/bin/env bash
# The lr-multiply ablation: run_defaults.sh's comparison with the defaults-5ep study's eoq preset (6-bit update
# codes, float lr, OneCycle peak 0.2, no crop) and the direct AMX / VNNI convolutions
# for the 16-64-channel layers (eoq/engine/direct.py): `eoq train --model resnet20 --norm fixup --preset eoq
# --epochs 5 --threads 1` with --engine int against the simulator in the integer engine's
# channels-last layout, the two side by side. Usage: reports/engines/run_direct.sh [RUNS_DIR]
NAME=accuracy_5ep_direct exec "$(dirname "$0")/run_defaults.sh" "${1:-runs/engines_direct}"
