#!/usr/bin/env bash
# Levers for EOQ at batch 1, tried on validation (seed 0, EOQ's chosen lr at B=1, 0.1*sqrt(1/128)*0.5):
# a 16-bit weight accumulator (a diagnostic: is it the update resolution?) and, inside 8 bits, a
# finer weight grid (the exponent goes up only when more than 20% of the codes saturate); then, to
# find what the 8 bits cost at batch 1, eoq with float gradients and errors, and with float
# activations (diagnostics on the simulator, bit-exact with the engine where both run).
# Writes runs.csv and study.md here (--resume: a run cut short starts again).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1
exec .venv/bin/python -m analysis.batch_study --batch-sizes 1 --lr-factors 0.5 --choose-only --threads 1 --resume \
  --add-config "EOQ 16-bit store=fixup:reports/batch_study/levers/eoq-store16.json" \
  --add-config "EOQ 20% clip=fixup:reports/batch_study/levers/eoq-sat20.json" \
  --add-config "EOQ float G, E=fixup:reports/batch_study/levers/eoq-float-ge.json" \
  --add-config "EOQ float A=fixup:reports/batch_study/levers/eoq-float-a.json" \
  --configs "EOQ 20% clip" "EOQ 16-bit store" "EOQ float G, E" "EOQ float A" --out reports/batch_study/levers "$@"
