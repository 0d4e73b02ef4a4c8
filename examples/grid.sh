# Sourced by the example scripts (after they set ROOT, the repository): the settings of a beta sweep,
# the runs of each of its phases, one run, the choice of beta, and running a list of runs on several
# devices at once. One file, so that sweep_beta.sh and slurm_sweep.sh run exactly the same grid.

. "$ROOT/examples/python.sh"  # PYTHON: the project's Python, without activating anything

DEVICE_FLAG=  # set by on_device; empty: run.py's own --device (EXTRA's, or auto)

# sweep_settings: every setting of a beta sweep, from the environment or its default
sweep_settings() {
    DATASET=${DATASET:-cifar10}
    MODEL=${MODEL:-vit_small_patch16_224.augreg_in1k}
    INIT_MODEL=${INIT_MODEL-$MODEL}            # empty: train the downstream model from random weights
    PRETRAINED=${PRETRAINED:-vit_giant_patch14_dinov2.lvd142m,vit_giant_patch14_clip_224.laion2b}
    METHODS=${METHODS:-"init kd aft"}
    BETAS=${BETAS:-"0.1 1 10 100"}
    SEEDS=${SEEDS:-"0 1 2"}
    STEPS=${STEPS:-5000}
    EVAL_STEPS=${EVAL_STEPS:-500}
    BATCH_SIZE=${BATCH_SIZE:-128}
    LR=${LR:-1e-4}
    EXTRA=${EXTRA:-}                           # more run.py flags, e.g. "--image_size=16 --device=cpu"
    PROMPT=${PROMPT:-}                         # your own text data: --prompt (it may hold spaces, EXTRA may not)
    SWEEP=$(echo "${DATASET}_$MODEL" | tr / - | sed 's/^[-.]*//')
    OUT=${OUT:-results/sweep_$SWEEP}           # results JSONs, beta.png, chosen.txt; one folder per dataset and model,
    CKPT_DIR=${CKPT_DIR:-checkpoints/sweep_$SWEEP}  # so the table and the chosen betas are this sweep's
    USE_WANDB=${USE_WANDB:-False}
    WANDB_GROUP=${WANDB_GROUP:-sweep_$SWEEP}   # one wandb group per sweep
}

# val_runs: phase 1, the validation runs, one "METHOD BETA SEED True" a line (init once per seed: its
# beta changes nothing)
val_runs() {
    for seed in $SEEDS; do
        for method in $METHODS; do
            if [ "$method" = init ]; then
                echo "init 0 $seed True"
            else
                for beta in $BETAS; do
                    echo "$method $beta $seed True"
                done
            fi
        done
    done
}

# test_runs: phase 2, the test runs at the betas in $OUT/chosen.txt, one "METHOD BETA SEED False" a line
test_runs() {
    for method in $METHODS; do
        beta=$(awk -v m="$method" '$1 == m { print $2 }' "$OUT/chosen.txt")
        case "$beta" in
            "") echo "error: no validation result for $method in $OUT; see the errors above" >&2; exit 1 ;;
            *[!0-9.e+-]*) echo "error: $OUT holds runs of several settings; give this sweep its own OUT=..." >&2; exit 1 ;;
        esac
        for seed in $SEEDS; do
            echo "$method $beta $seed False"
        done
    done
}

# count WORDS...: how many words
count() {
    echo $#
}

# choose_betas: each method's beta of the best mean validation accuracy, into $OUT/chosen.txt, written
# whole and renamed into place (the Slurm tasks of phase 2 each write it, all the same)
choose_betas() {
    _tmp=$(mktemp "$OUT/.chosen.XXXXXX")
    "$PYTHON" -m aft.results "$OUT" --chosen > "$_tmp" || { _status=$?; rm -f "$_tmp"; return "$_status"; }
    mv -f "$_tmp" "$OUT/chosen.txt"
}

# train METHOD BETA SEED USE_VAL: one run.py run under its default name (the main settings and a
# hash of all of them); run.py skips it when a results JSON of exactly this configuration exists
train() {
    # shellcheck disable=SC2086  # EXTRA is a list of flags; DEVICE_FLAG comes last, so it wins
    "$PYTHON" "$ROOT/run.py" --seed="$3" --model_class="$MODEL" --init_model="$INIT_MODEL" --dataset="$DATASET" \
        --pretrained_models="$PRETRAINED" --use_val="$4" --method="$1" --prec="$2" --steps="$STEPS" \
        --eval_steps="$EVAL_STEPS" --batch_size="$BATCH_SIZE" --lr="$LR" --no_augment=True \
        --use_wandb="$USE_WANDB" --wandb_group="$WANDB_GROUP" --out_dir="$OUT" \
        --ckpt_dir="$CKPT_DIR" --resume=True --skip_done=True --prompt="$PROMPT" $EXTRA $DEVICE_FLAG || return
    # Finished runs' checkpoints go: their results JSONs are what counts now. A checkpoint and a
    # results JSON of one (hashed) name are of the same configuration, so a running run's stays.
    for ckpt in "$CKPT_DIR"/*.pt; do
        if [ -f "$OUT/$(basename "$ckpt" .pt).json" ]; then
            rm -f "$ckpt"
        fi
    done
}

# on_device DEV: this (sub)shell's runs go to DEV, "cpu" or a CUDA device (a number or UUID). The
# device is made the only visible one (CUDA_VISIBLE_DEVICES, with --device=cuda) rather than named
# with --device=cuda:N: then nothing in a run, a library's default device included, can touch (or
# open a context on) another run's GPU, and it is the way Slurm hands a job its GPUs too.
on_device() {
    if [ "$1" = cpu ]; then
        DEVICE_FLAG=--device=cpu
    else
        export CUDA_VISIBLE_DEVICES="$1"
        DEVICE_FLAG=--device=cuda
    fi
}

# each_line CMD K N LINES: CMD with the words of every N-th line of LINES from the K-th (0-based) as
# its arguments, one after another. Without GPUS it stops at the first failure, as a plain loop under
# set -e would; with GPUS it goes on, so one failed run does not leave the device idle, and returns
# non-zero at the end.
each_line() {
    _cmd=$1 _k=$2 _n=$3 _i=0 _status=0 _ifs=$IFS
    IFS='
'
    for _line in $4; do
        IFS=$_ifs
        if [ $((_i % _n)) -eq "$_k" ]; then
            # shellcheck disable=SC2086  # the line's words are the arguments
            $_cmd $_line || {
                _status=$?
                [ -n "${GPUS:-}" ] || return "$_status"
                echo "error: failed: $_cmd $_line (on device $_dev)" >&2
            }
        fi
        _i=$((_i + 1))
    done
    IFS=$_ifs
    return "$_status"
}

# on_devices CMD LINES: CMD once per line of LINES (its words the arguments). Without GPUS one after
# another. With GPUS="0 1 2 3" (device names; "cpu" allowed, also repeated) the lines are dealt
# round-robin into one queue per device and all queues run at once, in the background, until all
# are done; a failed run makes it return non-zero after that, never before the others finish.
on_devices() {
    if [ -z "${GPUS:-}" ]; then
        each_line "$1" 0 1 "$2"
        return
    fi
    # shellcheck disable=SC2086  # GPUS is a list of devices
    _n=$(count $GPUS)
    _k=0 _pids=
    for _dev in $GPUS; do
        (on_device "$_dev" && each_line "$1" "$_k" "$_n" "$2") &
        _pids="$_pids $!"
        _k=$((_k + 1))
    done
    _status=0
    for _pid in $_pids; do
        wait "$_pid" || _status=$?
    done
    if [ "$_status" -ne 0 ]; then
        echo "error: the runs named above failed; fix the cause and start the script again (finished runs are skipped)" >&2
    fi
    return "$_status"
}
