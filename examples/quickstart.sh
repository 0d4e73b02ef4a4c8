#!/bin/sh
# The offline demo three ways, over 3 seeds: standard transfer learning (init), feature distillation
# (kd) and AFT, each training a tiny BERT on 38,158 tweets, kd and AFT from all-MiniLM-L6-v2's
# cached features. Then the table of test accuracies (mean ± std over seeds) and of the error
# relative to init.
#
#   sh examples/quickstart.sh                  # from the repository root (features/ is read there)
#   AFT_PREC=1 SEEDS="0 1" sh examples/quickstart.sh
set -e

AFT_PREC=${AFT_PREC:-10}       # beta of AFT: best of 1, 3, 10, 30 on the validation split
KD_PREC=${KD_PREC:-10}         # beta of KD: best of 1, 10 on the validation split
SEEDS=${SEEDS:-"0 1 2"}
OUT=${OUT:-results/quickstart}
EXTRA=${EXTRA:-}               # more run.py flags, e.g. "--steps=300"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # for python -m aft.results from any folder

for seed in $SEEDS; do
    # shellcheck disable=SC2086  # EXTRA is a list of flags
    python "$ROOT/run.py" --seed="$seed" --method=init --prec=0 --out_dir="$OUT" $EXTRA
    # shellcheck disable=SC2086
    python "$ROOT/run.py" --seed="$seed" --method=kd --prec="$KD_PREC" --out_dir="$OUT" $EXTRA
    # shellcheck disable=SC2086
    python "$ROOT/run.py" --seed="$seed" --method=aft --prec="$AFT_PREC" --out_dir="$OUT" $EXTRA
done

python -m aft.results "$OUT"
