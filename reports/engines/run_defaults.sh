#!/usr/bin/env bash
# The float-defaults tuning: the same comparison as run.sh with the eoq preset's current defaults (5% exponent
# policy, peak 0.15 -> 0.125, momentum 0.9375), i.e. the acceptance command of issue 2 with
# --engine int, against the simulator in the integer engine's channels-last layout. As run: the two
# side by side with 1 thread each. The eoq preset has changed since (the defaults-5ep study; the
# float-defaults tuning's recipe is eoq-shift); run_direct.sh calls this script with today's.
# Usage: [NAME=table_name] reports/engines/run_defaults.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs/engines_defaults}
COMMON=(--model resnet20 --norm fixup --preset eoq --epochs 5 --threads 1 --no-progress)
.venv/bin/eoq train "${COMMON[@]}" --engine int --out "$RUNS/int" &
.venv/bin/eoq train "${COMMON[@]}" --engine sim --channels-last --out "$RUNS/sim_cl"
wait
.venv/bin/python -m analysis.runs "$RUNS/sim_cl" "$RUNS/int" --out reports/engines --name "${NAME:-accuracy_5ep_defaults}"
.venv/bin/python reports/engines/same_weights.py "$RUNS/sim_cl" "$RUNS/int"
