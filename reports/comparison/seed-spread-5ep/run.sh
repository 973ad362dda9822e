#!/usr/bin/env bash
# Seed-spread study: runs, ResNet-20, full CIFAR-10, 5 epochs, as run: two at a time with 1 thread each.
# Every option not named is the default of `eoq train` at this commit (see README.md here).
# Usage: reports/comparison/seed-spread-5ep/run.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${1:-runs/seed-spread-5ep}
T=(.venv/bin/eoq train --model resnet20 --epochs 5 --threads 1 --no-progress)
# 1. seed spread of the three default configurations (their seed-0 runs: ../float-defaults-5ep/runs/
#    bn_m09_nest_crop2, fixup_torch1cycle_crop2 and ../exponent-policy-ablation-5ep/runs/eoq_default_cmd)
for s in 1 2; do
  "${T[@]}" --norm fixup --preset eoq  --seed $s --out "$RUNS/eoq_seed$s"
  "${T[@]}" --norm fixup --preset fp32 --seed $s --out "$RUNS/fixup_seed$s"
  "${T[@]}" --norm bn    --preset fp32 --seed $s --out "$RUNS/bn_seed$s"
done
# 2. EOQ at the OneCycleLR shape with the peak lr of fp32 (0.2; as a power of two 0.25), momentum
#    cycled between the shifts 0.9375 and 0.875; crop padding 4 and 2; the second with seeds 1 and 2
#    (eoqnew_seed*: these settings were the working-tree default while they ran)
C=(--norm fixup --preset eoq --schedule onecycle-cos --warmup 0.3 --lr 0.25 --momentum-min 0.875)
"${T[@]}" "${C[@]}"              --out "$RUNS/eoq_cos03_cyc_lr25"
"${T[@]}" "${C[@]}" --crop-pad 2 --out "$RUNS/eoq_cos03_cyc_lr25_crop2"
for s in 1 2; do
  "${T[@]}" "${C[@]}" --crop-pad 2 --seed $s --out "$RUNS/eoqnew_seed$s"
done
# 3. seed 1 collapsed at the lr peak: the same run with quantization statistics every 10 steps
#    (stopped after 2 epochs), and with the Fixup scalars' lr halved (lr/20: the scalar lr of the
#    default EOQ schedule), seeds 0 and 1
"${T[@]}" "${C[@]}" --crop-pad 2 --seed 1 --qstats-every 10 --out "$RUNS/diag_seed1"
for s in 1 0; do
  "${T[@]}" "${C[@]}" --crop-pad 2 --scalar-lr-scale 0.05 --seed $s --out "$RUNS/eoq_lr25_slr05_seed$s"
done
# 4. the same with every update clamped to +-7 weight LSBs (a 4-bit U), seeds 1 and 0
for s in 1 0; do
  "${T[@]}" "${C[@]}" --crop-pad 2 --preset reports/comparison/seed-spread-5ep/specs/u4.json --seed $s \
      --out "$RUNS/eoq_lr25_u4_seed$s"
done
# 5. the same settings as 2 with the warm-up over 50% of the run, seeds 0-3
for s in 0 1 2 3; do
  "${T[@]}" "${C[@]}" --crop-pad 2 --warmup 0.5 --seed $s --out "$RUNS/eoq_lr25_w05_seed$s"
done
# 6. fp32 + Fixup default with peak 0.25
"${T[@]}" --norm fixup --preset fp32 --lr 0.25 --out "$RUNS/fixup_lr25"
