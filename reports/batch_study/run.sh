#!/usr/bin/env bash
# Starts or resumes the small-batch study (analysis/batch_study.py) in two processes of one thread
# each, sharing the work by configuration (part a: WAGEUBN, whose steps take two to three times
# fp32's; part b: EOQ, fp32+Fixup and fp32+BN); each writes reports/batch_study/runs-<part>.csv after every run and goes on from it
# (--resume), so a run cut short starts again and every finished one is kept. When both parts
# are done, study.md and the figures are made from both.
#
# Usage: nohup reports/batch_study/run.sh > runs/batch_study.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-reports/batch_study}
export OMP_NUM_THREADS=1
mkdir -p runs
part() {   # name, configurations...
  local name=$1; shift
  exec 8>"runs/batch_study_$name.lock"
  if ! flock -n 8; then echo "part $name: running in another process"; return 0; fi
  echo "$(date -u +%FT%TZ) part $name: start"
  "$PY" -m analysis.batch_study --configs "$@" --part "$name" --threads 1 --resume --out "$OUT" \
    >>"runs/batch_study_$name.log" 2>&1
  echo "$(date -u +%FT%TZ) part $name: exit $?"
}
part a WAGEUBN &
part b EOQ fp32+Fixup fp32+BN &
wait
# both done: this renders the table and figures from both parts (nothing is left to run)
"$PY" -m analysis.batch_study --configs WAGEUBN --part a --threads 1 --resume --out "$OUT" | tail -n 40
