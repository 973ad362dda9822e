#!/usr/bin/env bash
# The lr-multiply ablation: which of the defaults-5ep study's changes to EOQ carries its gain? The eoq preset's
# arithmetic with one change undone at a time, all at eoq's own schedule (peak 0.2, OneCycle cos,
# 30% warm-up, momentum 0.9375 -> 0.875, no crop), 5 epochs, seeds 0 and 1, on the integer engine
# (bit-exact with the simulator in channels-last layout; 1 thread each, two runs at a time).
#   eoq           the preset (seed 0 is reports/engines/runs_direct/int)
#   eoq-u8        update codes clamped to +-127 instead of +-31
#   eoq-lrpow2    lr rounded to a power of two (0.2 -> 0.25 at the peak) instead of a multiply
#   eoq-u8-lrpow2 both undone: eoq-shift's arithmetic at eoq's schedule
# Usage: reports/comparison/lr-multiply-ablation-5ep/run.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${1:-runs/lr-multiply-ablation-5ep}
HERE=reports/comparison/lr-multiply-ablation-5ep
COMMON="--model resnet20 --norm fixup --engine int --epochs 5 --threads 1 --no-progress --lr 0.2 --schedule onecycle-cos --warmup 0.3 --momentum 0.9375 --momentum-min 0.875 --crop-pad 0"
{
  echo "eoq 1"
  for spec in u8 lrpow2 u8_lrpow2; do for seed in 0 1; do echo "$spec $seed"; done; done
} | xargs -P 2 -L 1 bash -c '
  name=$0 seed=$1
  preset=$([ "$name" = eoq ] && echo eoq || echo '"$HERE"'/specs/$name.json)
  .venv/bin/eoq train '"$COMMON"' --preset "$preset" --seed "$seed" --out '"$RUNS"'/${name}_s$seed \
    > '"$RUNS"'/${name}_s$seed.log 2>&1 || echo "${name}_s$seed stopped early: $(tail -n 1 '"$RUNS"'/${name}_s$seed.log)"'
# the table takes the runs that finished all 5 epochs (a diverged run ends with "eoq: error: ...")
DONE=(reports/engines/runs_direct/int)
for r in eoq_s1 u8_s0 u8_s1 lrpow2_s0 lrpow2_s1 u8_lrpow2_s0 u8_lrpow2_s1; do
  grep -q "^final:" "$RUNS/$r.log" && DONE+=("$RUNS/$r")
done
.venv/bin/python -m analysis.runs "${DONE[@]}" --seeds --out "$HERE" --name ablation
