#!/usr/bin/env bash
# Starts or resumes every run of the long-schedule campaign (reports/comparison/resnet20-30ep/,
# resnet56-15ep/, and the 5-epoch learning-rate-format runs of reports/lr_format/), two at a time
# with one thread each, in the order listed. A finished run is skipped, an interrupted one resumed
# from its checkpoint (--resume); each finished run's config.json, metrics.csv and log are copied
# beside its report (never the checkpoint), and a run whose copy is there counts as finished, so a
# fresh checkout goes on with the runs that are left. A run that diverged (exit 3) keeps its files
# and is not retried. Checkpoints live in runs/ (not committed): a run stopped half-way in another
# checkout starts again from its first epoch.
#
# Usage: reports/comparison/campaign.sh [GROUP ...]     (default: every group, in order)
#   nohup reports/comparison/campaign.sh > runs/campaign.log 2>&1 &
#   reports/comparison/campaign.sh --status [GROUP ...]  (where each run stands; starts nothing)
# Groups (campaign.runs): tune30 (crop padding chosen on validation, 30 epochs, seed 0), lrfmt
# (fixed-point learning rate, 5 epochs), final30 and final30eoq (the 30-epoch comparison), qstats30
# (the quantization statistics of eoq seed 0 at 30 epochs), r56 (ResNet-56, 15 epochs), tune30bn
# (fp32+BN's crop padding and peak lr at 30 epochs, on validation), final30wage (wageubn seeds 1-2),
# base30 (the online-adaptation study's base networks, reports/adaptation/base/: their checkpoints
# stay in runs/long for the weights export), momentum30 (the momentum width of eoq, reports/momentum/).
# Runs live in runs/long/<name>; PARALLEL=1 runs them one at a time.
set -uo pipefail
cd "$(dirname "$0")/../.."
EOQ=${EOQ:-.venv/bin/eoq}
PARALLEL=${PARALLEL:-2}
export OMP_NUM_THREADS=1

# The runs are listed in campaign.runs (group|name|report folder|options), read as each group
# starts; every run: full CIFAR-10, 45,000 train / 5,000 validation (the default --val).
RUNS_FILE=${RUNS_FILE:-reports/comparison/campaign.runs}
status=0; [ "${1:-}" = --status ] && { status=1; shift; }
groups=("$@")
[ ${#groups[@]} -eq 0 ] && mapfile -t groups < <(cut -d"|" -f1 "$RUNS_FILE" | grep -v "^#" | awk "!seen[\$0]++")

keep_files() {   # run dir, report copy: the run's files beside its report (never the checkpoint)
  mkdir -p "$2"
  for f in config.json metrics.csv train.log DIVERGED; do [ -f "$1/$f" ] && cp "$1/$f" "$2/"; done
  if [[ "$2" == reports/adaptation/* ]] && [ -f "$1/checkpoint.pt" ]; then   # a base network ships its weights
    "$(dirname "$EOQ")/python" -c "import sys; from eoq.training.weights import export_weights; export_weights(sys.argv[1])" "$1" \
      && cp "$1/weights.pt" "$1/weights.sha256" "$2/"
  fi
  return 0
}
export -f keep_files

locate() {   # name|folder|options -> (the caller's locals) name, dir, keep, epochs, and state/at:
             # finished or diverged, and where (here first, then as committed by an earlier checkout)
  IFS='|' read -r name folder opts <<<"$1"
  dir="runs/long/$name" keep="reports/comparison/$folder/runs/$name" state="" at=""
  [ "$folder" = lr_format ] && keep="reports/lr_format/runs/$name"
  [[ "$folder" == reports/* ]] && keep="$folder/runs/$name"          # a report outside reports/comparison
  epochs=$(sed -n 's/.*--epochs \([0-9]*\).*/\1/p' <<<"$opts")
  local d
  for d in "$dir" "$keep"; do
    if [ -f "$d/metrics.csv" ] && [ "$(tail -n1 "$d/metrics.csv" | cut -d, -f1)" = "$epochs" ]; then
      state=finished at=$d; return 0
    fi
  done
  for d in "$dir" "$keep"; do
    if [ -f "$d/DIVERGED" ]; then state=diverged at=$d; return 0; fi
  done
}
export -f locate

one() {   # name|folder|options
  local name folder opts dir keep epochs state at
  locate "$1"
  if [ "$state" = finished ]; then
    echo "$name: finished ($at)"
    [ "$at" = "$dir" ] && [ ! -f "$keep/metrics.csv" ] && keep_files "$dir" "$keep"   # finished outside this script
    return 0
  fi
  if [ "$state" = diverged ]; then echo "$name: diverged ($(cat "$at/DIVERGED")), not retried"; return 0; fi
  mkdir -p "$dir"
  exec 9>"$dir/.lock"                       # one process per run, even with two campaigns going
  if ! flock -n 9; then echo "$name: running in another process"; return 0; fi
  local resume=(); [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
  echo "$(date -u +%FT%TZ) $name: start ${resume[*]}"
  # shellcheck disable=SC2086
  $EOQ train $opts --threads 1 --no-progress --out "$dir" "${resume[@]}" >>"$dir/train.log" 2>&1
  local rc=$?
  exec 9>&-
  echo "$(date -u +%FT%TZ) $name: exit $rc"
  [ $rc -eq 3 ] && tail -n1 "$dir/train.log" > "$dir/DIVERGED"   # exit 3: training diverged (eoq train)
  if [ $rc -eq 0 ] || [ $rc -eq 3 ]; then keep_files "$dir" "$keep"; fi   # a divergence is a result too
}
export -f one
export EOQ

where() {   # name|folder|options: one line saying where the run stands
  local name folder opts dir keep epochs state at last=0 running=""
  locate "$1"
  [ -f "$dir/.lock" ] && ! flock -n "$dir/.lock" true 2>/dev/null && running=", running now"   # one() holds it
  if [ "$state" = finished ]; then echo "$name: finished ($at)"
  elif [ "$state" = diverged ]; then echo "$name: diverged: $(cat "$at/DIVERGED")"
  elif [ -f "$dir/checkpoint.pt" ]; then
    [ -f "$dir/metrics.csv" ] && last=$(tail -n1 "$dir/metrics.csv" | cut -d, -f1)
    echo "$name: epoch $last of $epochs done, resumes from runs/long$running"
  elif [ -n "$running" ]; then echo "$name: in its first epoch (no checkpoint yet)$running"
  else echo "$name: not started"
  fi
}
if [ $status -eq 1 ]; then
  for g in "${groups[@]}"; do
    grep "^$g|" "$RUNS_FILE" | cut -d"|" -f2- | while read -r line; do echo "$g $(where "$line")"; done
  done
  exit 0
fi
for g in "${groups[@]}"; do
  grep "^$g|" "$RUNS_FILE" | cut -d"|" -f2- | xargs -d '\n' -P "$PARALLEL" -I{} bash -c 'one "$1"' _ {}
done
