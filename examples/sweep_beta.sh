#!/bin/sh
# Choose beta (--prec) on the validation split, then measure the test accuracy at the chosen beta:
#   1. every method x beta x seed with --use_val=True (init once per seed: its beta changes nothing);
#   2. every method x seed with --use_val=False at the beta with the best mean validation accuracy;
#   3. the summary table and a plot of validation accuracy against beta ($OUT/beta.png).
#
#   sh examples/sweep_beta.sh                                  # the settings in examples/grid.sh
#   SEEDS="0 1" BETAS="1 10" STEPS=500 sh examples/sweep_beta.sh   # any setting from the environment
#   GPUS="0 1 2 3" sh examples/sweep_beta.sh                   # one run per GPU at a time
#
# GPUS (device names: CUDA numbers or UUIDs, or "cpu", also repeated) spreads each phase's runs over
# the devices, one queue per device run in the background, and waits for all before the next phase;
# a failed run makes the script stop non-zero once its phase is over. Without GPUS the runs go one
# after another. The results are the same files either way. Across the machines of a Slurm cluster:
# examples/slurm_sweep.sh.
#
# A run whose results JSON of the same configuration exists is skipped (run.py --skip_done decides,
# from every setting, EXTRA included), and a killed run resumes from its checkpoint, so the script
# can simply be started again after an interruption; a changed setting runs afresh. Run it from the
# folder that holds features/ (the feature caches; missing ones are computed on the spot, so with
# GPUS compute them first with examples/save_features.sh, or every queue computes them at once).
set -e

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # for python -m aft.results from any folder
. "$ROOT/examples/grid.sh"
sweep_settings

echo "== 1. validation runs: methods $METHODS, betas $BETAS, seeds $SEEDS"
on_devices train "$(val_runs)"

echo "== 2. test runs at the beta chosen on validation"
choose_betas
cat "$OUT/chosen.txt"
runs=$(test_runs)
on_devices train "$runs"

echo "== 3. summary"
"$PYTHON" -m aft.results "$OUT" --plot "$OUT/beta.png"
