#!/usr/bin/env bash
# Starts or resumes the small-batch study (analysis/batch_study.py) in two processes of one thread
# each, sharing the work by configuration (part a: WAGEUBN, whose steps take two to three times
# fp32's; part b: EOQ, fp32+Fixup and fp32+BN); each writes reports/batch_study/runs-<part>.csv after every run and goes on from it
# (--resume), so a run cut short starts again and every finished one is kept. When both parts
# are done, study.md and the figures are made from both.
#
# Usage: nohup reports/batch_study/run.sh [PART ...] > runs/batch_study.log 2>&1 &
#   PART: a, b or both (the default); one part alone leaves the other core to other work, and the part
#   that ends last writes the study with both parts' runs.
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
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(a b)
for p in "${parts[@]}"; do
  case $p in
    a) part a WAGEUBN & ;;
    b) part b EOQ fp32+Fixup fp32+BN & ;;
    *) echo "run.sh: unknown part '$p' (a or b)" >&2; exit 2 ;;
  esac
done
wait   # each part writes study.md and the figures from every part's runs when it ends
