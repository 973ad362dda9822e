#!/usr/bin/env bash
# 5-epoch EOQ ResNet-20 on the full CIFAR-10 (JPEG copy) with the simulator and with the integer
# engine, same seed and schedule (peak lr 0.15 -> power-of-two 0.125), one thread each so that
# the two runs can share the 2-core machine. Usage: reports/engines/run.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs/engines_5ep}
COMMON=(--model resnet20 --norm fixup --preset eoq --epochs 5 --lr 0.15 --threads 1 --no-progress)
.venv/bin/eoq train "${COMMON[@]}" --engine sim --out "$RUNS/sim" > "$RUNS.sim.log" 2>&1 &
.venv/bin/eoq train "${COMMON[@]}" --engine int --out "$RUNS/int" > "$RUNS.int.log" 2>&1 &
wait
# the same simulation in the integer engine's memory layout (channels-last): float reductions
# (Fixup scalar gradients) then add in the same order as in the integer run
.venv/bin/eoq train "${COMMON[@]}" --engine sim --channels-last --threads 2 --out "$RUNS/sim_cl" > "$RUNS.sim_cl.log" 2>&1
.venv/bin/python -m analysis.runs "$RUNS/sim" "$RUNS/sim_cl" "$RUNS/int" --out reports/engines --name accuracy_5ep
