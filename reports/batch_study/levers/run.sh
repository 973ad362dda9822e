#!/usr/bin/env bash
# Levers for EOQ at batch 1, tried on validation at EOQ's chosen lr at B=1 (0.1 * sqrt(1/128) * 0.5):
#  - screening, seed 0: a 16-bit weight accumulator (a diagnostic: is it the update resolution?);
#    inside 8 bits, a finer weight grid (the exponent goes up only when more than 20% of the codes
#    saturate); to find what the 8 bits cost, eoq with float gradients and errors, and with float
#    activations (diagnostics, on the simulator); gradients rounded to nearest (they are rounded
#    twice, G then U);
#  - the one that came out ahead of eoq at seed 0 (float G, E), at seeds 1 and 2 as well; then its
#    two halves, float E and float G, at seeds 0-2;
#  - inside 8-bit codes, the lever that follows (float E gained, float G did not): errors by
#    WAGEUBN's flag quantizer (FQ), which keeps the small errors that SQ rounds to 0 or 1 unit,
#    seeds 0-2, and errors rounded to nearest (at batch 1 no other sample averages E's stochastic
#    rounding out of the gradient), seeds 0-2 (parts "inside8" and "nearest", which may run beside
#    the rest: they write runs-inside8.csv and runs-nearest.csv).
# EOQ itself at seeds 0-2 is in ../runs-b.csv (same stream, same lr). Writes runs.csv and study.md
# here (--resume: a run cut short starts again).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1
L=reports/batch_study/levers
# Usage: run.sh [inside8 | nearest]   (everything in order; a part's name: that part alone)
study() {
  .venv/bin/python -m analysis.batch_study --batch-sizes 1 --lr-factors 0.5 --choose-only --threads 1 --resume \
    --add-config "EOQ 16-bit store=fixup:$L/eoq-store16.json" \
    --add-config "EOQ 20% clip=fixup:$L/eoq-sat20.json" \
    --add-config "EOQ float G, E=fixup:$L/eoq-float-ge.json" \
    --add-config "EOQ float A=fixup:$L/eoq-float-a.json" \
    --add-config "EOQ G nearest=fixup:$L/eoq-g-nearest.json" \
    --add-config "EOQ float E=fixup:$L/eoq-float-e.json" \
    --add-config "EOQ float G=fixup:$L/eoq-float-g.json" \
    --add-config "EOQ E by FQ=fixup:$L/eoq-e-fq.json" \
    --add-config "EOQ E nearest=fixup:$L/eoq-e-nearest.json" \
    --out $L "$@"
}
if [ "${1:-}" = inside8 ]; then
  study --seeds 0 1 2 --configs "EOQ E by FQ" --part inside8; exit
fi
if [ "${1:-}" = nearest ]; then
  study --seeds 0 1 2 --configs "EOQ E nearest" --part nearest; exit
fi
study --seeds 0 --configs "EOQ 20% clip" "EOQ 16-bit store" "EOQ float G, E" "EOQ float A" "EOQ G nearest"
study --seeds 0 1 2 --configs "EOQ float G, E"
study --seeds 0 1 2 --configs "EOQ float E" "EOQ float G"
study --seeds 0 1 2 --configs "EOQ E by FQ" --part inside8
study --seeds 0 1 2 --configs "EOQ E nearest" --part nearest
