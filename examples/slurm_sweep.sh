#!/bin/sh
#SBATCH --requeue
#SBATCH --open-mode=append
# The beta sweep of examples/sweep_beta.sh (the same grid: examples/grid.sh) as Slurm jobs:
#   1. a job array of the validation runs, one run.py run per array task (--array=0-(N-1), N from
#      the grid; given on sbatch's command line, which is what an #SBATCH line would say);
#   2. after all of them succeeded (--dependency=afterok), a job array of the test runs: each task
#      chooses beta from the validation results ($OUT/chosen.txt) and runs its method and seed;
#   3. then a job that prints the table and plots $OUT/beta.png (in its log, slurm-<job id>.out).
#
#   sh examples/slurm_sweep.sh                                     # submits the three jobs, then returns
#   SEEDS="0 1" BETAS="1 10" SBATCH_ARGS="--partition=gpu --time=4:00:00" sh examples/slurm_sweep.sh
#   squeue --me                                                    # watch them
#
# Settings come from the environment, as sweep_beta.sh's (examples/grid.sh lists them); the jobs
# get the submitting shell's environment (--export=ALL). SBATCH_ARGS: more sbatch flags for every job
# (partition, account, time limit; "--opt=value" form); GPU_ARGS (default --gres=gpu:1): the
# resources of one run; each run uses the GPU Slurm gives it (CUDA_VISIBLE_DEVICES, --device=auto).
# Submit from the folder that holds features/ (the jobs start there); compute missing feature caches
# first (examples/save_features.sh, e.g. in `srun --gres=gpu:1 sh examples/save_features.sh`), or
# every task of the first array computes them at once.
#
# Every run has --ckpt_dir, --resume=True and --skip_done=True, and the jobs are --requeue: a task
# that is pre-empted (SIGTERM) writes a checkpoint, requeues itself and continues from it, and a run whose results JSON of the
# same configuration exists is skipped. So submitting again after a failure redoes only what is
# missing, and a changed setting runs afresh.
set -e

# Inside a job, $0 is Slurm's copy of this script: the repository comes from the submitting shell.
AFT_ROOT=${AFT_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
ROOT=$AFT_ROOT
export AFT_ROOT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # for python -m aft.results from any folder
. "$ROOT/examples/grid.sh"
sweep_settings
GPU_ARGS=${GPU_ARGS:---gres=gpu:1}
SBATCH_ARGS=${SBATCH_ARGS:-}

# task RUNS: the run of this array task, line $SLURM_ARRAY_TASK_ID (0-based) of RUNS. Pre-empted
# (Slurm sends SIGTERM to the job's processes, then SIGKILL), run.py writes a checkpoint where it is
# and exits 143; the task then requeues itself, and started again resumes from that checkpoint.
task() {
    line=$(echo "$1" | sed -n "$((SLURM_ARRAY_TASK_ID + 1))p")
    if [ -z "$line" ]; then
        echo "error: no run $SLURM_ARRAY_TASK_ID in the grid; the settings changed since submission: submit again" >&2
        exit 2
    fi
    trap ':' TERM  # this shell waits on for run.py, which stops itself cleanly on the signal
    status=0
    # shellcheck disable=SC2086  # the line's words are train's arguments
    train $line || status=$?
    if [ "$status" -eq 143 ]; then
        echo "pre-empted: requeueing ${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID, which resumes from its checkpoint"
        scontrol requeue "${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID"
        exit 0
    fi
    exit "$status"
}

# submit STAGE FLAGS...: sbatch this script's STAGE with FLAGS; prints the job id
submit() {
    stage=$1
    shift
    # shellcheck disable=SC2086  # SBATCH_ARGS is a list of flags
    id=$(sbatch --parsable --export=ALL "$@" $SBATCH_ARGS "$ROOT/examples/slurm_sweep.sh" "$stage")
    echo "${id%%;*}"  # --parsable prints "id" or "id;cluster"
}

case "${1:-submit}" in
    submit)
        n_val=$(val_runs | wc -l)
        # shellcheck disable=SC2086  # lists of words
        n_test=$(($(count $METHODS) * $(count $SEEDS)))
        # shellcheck disable=SC2086  # GPU_ARGS is a list of flags
        val_job=$(submit val --job-name="val_$SWEEP" --array=0-$((n_val - 1)) --requeue $GPU_ARGS)
        # shellcheck disable=SC2086
        test_job=$(submit test --job-name="test_$SWEEP" --array=0-$((n_test - 1)) --requeue $GPU_ARGS \
            --dependency=afterok:"$val_job")
        table_job=$(submit table --job-name="table_$SWEEP" --dependency=afterok:"$test_job")
        echo "submitted: validation runs $val_job ($n_val tasks), test runs $test_job ($n_test tasks), table $table_job"
        ;;
    val)
        task "$(val_runs)"
        ;;
    test)
        choose_betas
        runs=$(test_runs)
        task "$runs"
        ;;
    table)
        cat "$OUT/chosen.txt"
        "$PYTHON" -m aft.results "$OUT" --plot "$OUT/beta.png"
        ;;
    *)
        echo "error: unknown stage $1; run the script without arguments to submit the sweep" >&2
        exit 2
        ;;
esac
