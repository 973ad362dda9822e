#!/usr/bin/env bash
# The learning-rate-format table and curves from the runs the campaign copied here
# (reports/comparison/campaign.sh lrfmt): seed table (validation and test, mean and std) and curves.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m analysis.runs reports/lr_format/runs/eoq_lr{float,4,8,16}_s{0,1} \
  --out reports/lr_format --name lr_format --seeds
