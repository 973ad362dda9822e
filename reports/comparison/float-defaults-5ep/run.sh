#!/usr/bin/env bash
# Float-defaults tuning: 5-epoch schedule tuning, ResNet-20 on the full CIFAR-10, seed 0, as run: two at a
# time with 1 thread each. Every option not named is the default of the time (peak lr 0.2, linear
# one-cycle with 15% warm-up, momentum 0.875, weight decay 5e-4, batch 128, crop pad 4 + flips).
# Usage: reports/comparison/float-defaults-5ep/run.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${1:-runs/float-defaults-5ep}
T=(.venv/bin/eoq train --model resnet20 --epochs 5 --threads 1 --no-progress)
TORCH1CYCLE=(--schedule onecycle-cos --warmup 0.3 --momentum 0.95 --momentum-min 0.85)
"${T[@]}" --norm bn    --preset fp32 --momentum 0.9 --label-smoothing 0.1 --out "$RUNS/bn_m09_ls01"
"${T[@]}" --norm fixup --preset fp32 --label-smoothing 0.1                --out "$RUNS/fixup_ls01"
"${T[@]}" --norm bn    --preset fp32 --momentum 0.9 --nesterov             --out "$RUNS/bn_m09_nest"
"${T[@]}" --norm fixup --preset fp32 --nesterov                           --out "$RUNS/fixup_nest"
"${T[@]}" --norm bn    --preset fp32 "${TORCH1CYCLE[@]}"                  --out "$RUNS/bn_torch1cycle"
"${T[@]}" --norm fixup --preset fp32 "${TORCH1CYCLE[@]}"                  --out "$RUNS/fixup_torch1cycle"
"${T[@]}" --norm fixup --preset fp32 "${TORCH1CYCLE[@]}" --crop-pad 2     --out "$RUNS/fixup_torch1cycle_crop2"
"${T[@]}" --norm bn    --preset fp32 --momentum 0.9 --nesterov --crop-pad 2 --out "$RUNS/bn_m09_nest_crop2"
# EOQ (the eoq preset with its defaults: peak 0.15 -> 0.125, momentum 0.9375) with the smaller crop,
# and with the OneCycleLR lr shape too (no momentum cycling: an integer update's momentum is a shift)
E=(.venv/bin/eoq train --model resnet20 --norm fixup --preset eoq --epochs 5 --threads 1 --no-progress --crop-pad 2)
"${E[@]}"                                          --out "$RUNS/eoq_crop2"
"${E[@]}" --schedule onecycle-cos --warmup 0.3     --out "$RUNS/eoq_crop2_cos03"
.venv/bin/eoq train --model resnet20 --norm fixup --preset eoq --epochs 5 --threads 1 --no-progress \
    --schedule onecycle-cos --warmup 0.3 --out "$RUNS/eoq_cos03"
.venv/bin/eoq train --model resnet20 --norm fixup --preset eoq --epochs 5 --threads 1 --no-progress \
    --schedule onecycle-cos --warmup 0.3 --momentum-min 0.875 --out "$RUNS/eoq_cos03_cyc"
# the exponent policy beyond 5% (reports/comparison/exponent-policy-ablation-5ep: 0.1% -> 1% -> 5% gave 67.44 -> 69.54 -> 71.01)
for p in 10 20; do
  .venv/bin/eoq train --model resnet20 --norm fixup --preset reports/comparison/float-defaults-5ep/specs/sat$p.json \
      --epochs 5 --threads 1 --no-progress --out "$RUNS/eoq_sat$p"
done
# momentum 1 - 2^-5 (the exponent-policy ablation: 0.875 -> 0.9375 gave 69.78 -> 71.01), at peak 0.125 and 0.0625
M=(.venv/bin/eoq train --model resnet20 --norm fixup --preset eoq --epochs 5 --threads 1 --no-progress --momentum 0.96875)
"${M[@]}"            --out "$RUNS/eoq_m96875"
"${M[@]}" --lr 0.07  --out "$RUNS/eoq_m96875_lr0625"
