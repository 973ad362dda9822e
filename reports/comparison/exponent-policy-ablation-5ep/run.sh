#!/usr/bin/env bash
# Exponent-policy ablation: EOQ ablations, ResNet-20 Fixup, full CIFAR-10, 5 epochs, seed 0 (as run: two at a
# time with 1 thread each). Usage: reports/comparison/exponent-policy-ablation-5ep/run.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUNS=${1:-runs/exponent-policy-ablation-5ep}
S=reports/comparison/exponent-policy-ablation-5ep/specs
T=(.venv/bin/eoq train --model resnet20 --norm fixup --epochs 5 --threads 1 --no-progress)
"${T[@]}" --preset fp32           --lr 0.125 --momentum 0.9375 --out "$RUNS/fp32_lr125_m9375"
"${T[@]}" --preset $S/store16.json --lr 0.15 --momentum 0.9375 --out "$RUNS/store16"
"${T[@]}" --preset $S/sat01.json   --lr 0.15 --momentum 0.9375 --out "$RUNS/sat01"
"${T[@]}" --preset $S/sat05.json   --lr 0.15 --momentum 0.9375 --out "$RUNS/sat05"
"${T[@]}" --preset $S/nopow2.json  --lr 0.2 --momentum 0.875    --out "$RUNS/nopow2"
"${T[@]}" --preset $S/sat01.json   --lr 0.2 --momentum 0.875    --out "$RUNS/sat01_default"
"${T[@]}" --preset $S/sat05.json   --lr 0.2 --momentum 0.875    --out "$RUNS/sat05_default"
"${T[@]}" --preset $S/sat05.json   --lr 0.125 --momentum 0.875  --out "$RUNS/sat05_lr125_m875"
# the eoq preset as it is now (policy 5%) with its default schedule (peak 0.15, momentum 0.9375), 2 threads:
.venv/bin/eoq train --model resnet20 --norm fixup --preset eoq --epochs 5 --threads 2 --no-progress --out "$RUNS/eoq_default_cmd"
# fp32 with momentum 0.9 (the issue's calibration script used SGD 0.9), everything else default:
"${T[@]}" --norm bn --preset fp32 --momentum 0.9 --out "$RUNS/bn_m09"
"${T[@]}" --preset fp32 --momentum 0.9 --out "$RUNS/fixup_m09"
