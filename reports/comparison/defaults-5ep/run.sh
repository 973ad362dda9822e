#!/usr/bin/env bash
# Defaults-5ep study: runs, ResNet-20, full CIFAR-10, 5 epochs, as run: two at a time with 1 thread each.
# Every option not named is the default of `eoq train` at commit 31fab1d (see README.md here).
# Usage: reports/comparison/defaults-5ep/run.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${1:-runs/defaults-5ep}
T=(.venv/bin/eoq train --model resnet20 --epochs 5 --threads 1 --no-progress)
S=reports/comparison/defaults-5ep/specs
# 1. EOQ at peak 0.25 with the OneCycleLR shape and crop padding 2 (seed-spread-5ep's eoqnew setting,
#    which collapsed on seed 1), with every update clamped to +-15 (5-bit U) or +-31 (6-bit U) LSBs
C=(--norm fixup --schedule onecycle-cos --warmup 0.3 --lr 0.25 --momentum-min 0.875 --crop-pad 2)
for u in 5 6; do
  "${T[@]}" "${C[@]}" --preset $S/u$u.json --seed 1 --out "$RUNS/eoq_lr25_u${u}_seed1"
done
for s in 0 2; do
  "${T[@]}" "${C[@]}" --preset $S/u6.json --seed $s --out "$RUNS/eoq_lr25_u6_seed$s"
done
# 2. the same 6-bit U with the warm-up over 50% of the run (seed-spread-5ep: 65.76% and NaN on seeds 2, 3)
for s in 2 3; do
  "${T[@]}" "${C[@]}" --warmup 0.5 --preset $S/u6.json --seed $s --out "$RUNS/eoq_lr25_u6_w05_seed$s"
done
# 3. fp32 + Fixup default without the random crop (flips only), seeds 0-2, three at a time
for s in 0 1 2; do
  "${T[@]}" --norm fixup --preset fp32 --crop-pad 0 --seed $s --out "$RUNS/fixup_crop0_seed$s"
done
# 4. EOQ at fp32 + Fixup's schedule with crop padding 0: learning rate used as it is (peak 0.2, not a
#    power of two; specs/u6_lrmul.json), momentum cycled between the shifts 0.9375 and 0.875, updates
#    clamped to +-31 LSBs; seeds 0-2, three at a time
for s in 0 1 2; do
  "${T[@]}" --norm fixup --preset $S/u6_lrmul.json --lr 0.2 --schedule onecycle-cos --warmup 0.3 \
      --momentum 0.9375 --momentum-min 0.875 --crop-pad 0 --seed $s --out "$RUNS/eoq_lrmul_u6_crop0_seed$s"
done
# 5. seeds 3 and 4 of the same (two at a time)
for s in 3 4; do
  "${T[@]}" --norm fixup --preset $S/u6_lrmul.json --lr 0.2 --schedule onecycle-cos --warmup 0.3 \
      --momentum 0.9375 --momentum-min 0.875 --crop-pad 0 --seed $s --out "$RUNS/eoq_lrmul_u6_crop0_seed$s"
done
# 6. after the defaults changed (this commit's eoq train): seeds 3 and 4 of the fp32 + Fixup default
for s in 3 4; do
  "${T[@]}" --norm fixup --preset fp32 --seed $s --out "$RUNS/fixup_default_seed$s"
done
