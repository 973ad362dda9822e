#!/usr/bin/env bash
# 5-epoch EOQ ResNet-20 on the full CIFAR-10 (JPEG copy) with the integer engine and with the
# simulator, same seed and schedule (peak lr 0.15 -> power-of-two 0.125). The integer engine keeps
# activations channels-last; the simulator is run in that layout too, so that the float reductions
# between layers (Fixup scalar gradients) add in the same order. Usage: reports/engines/run.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs/engines_5ep}
# the eoq preset as it was when these runs were made (0.1% exponent policy, momentum 0.875);
# `--preset eoq` without --momentum now trains with the exponent-policy ablation's defaults
COMMON=(--model resnet20 --norm fixup --preset reports/comparison/exponent-policy-ablation-5ep/specs/sat0001.json
        --epochs 5 --lr 0.15 --momentum 0.875 --threads 2 --no-progress)
.venv/bin/eoq train "${COMMON[@]}" --engine int --out "$RUNS/int"
.venv/bin/eoq train "${COMMON[@]}" --engine sim --channels-last --out "$RUNS/sim_cl"
.venv/bin/python -m analysis.runs "$RUNS/sim_cl" "$RUNS/int" --out reports/engines --name accuracy_5ep
.venv/bin/python reports/engines/same_weights.py "$RUNS/sim_cl" "$RUNS/int"
