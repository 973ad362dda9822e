#!/usr/bin/env bash
# Compare fp32+BN, fp32+Fixup and EOQ on the full CIFAR-10 (JPEG copy), ResNet-20, the default
# schedule of `eoq train` for all three. Usage: reports/comparison/run.sh EPOCHS [RUNS_DIR]
# Writes RUNS_DIR/{bn_fp32,fixup_fp32,fixup_eoq}/ and reports/comparison/accuracy_<EPOCHS>ep.md + curves.
set -euo pipefail
cd "$(dirname "$0")/../.."
EPOCHS=${1:?epochs}
RUNS=${2:-runs/comparison_${EPOCHS}ep}
COMMON=(--model resnet20 --epochs "$EPOCHS" --threads 2 --no-progress)
for cfg in "bn fp32" "fixup fp32" "fixup eoq"; do
  set -- $cfg
  dir="$RUNS/${1}_${2}"
  if [ -f "$dir/metrics.csv" ] && [ "$(tail -n1 "$dir/metrics.csv" | cut -d, -f1)" = "$EPOCHS" ]; then continue; fi
  resume=(); [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
  .venv/bin/eoq train "${COMMON[@]}" --norm "$1" --preset "$2" --out "$dir" "${resume[@]}"
done
.venv/bin/python -m analysis.runs "$RUNS/bn_fp32" "$RUNS/fixup_fp32" "$RUNS/fixup_eoq" \
  --out reports/comparison --name "accuracy_${EPOCHS}ep"
