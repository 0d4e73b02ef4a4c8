#!/bin/sh
# Step 2 of the paper's pipeline: train the downstream model with one method and beta over seeds,
# with the paper's command (ViT-S on CIFAR-10 with AFT from ViT-G DINOv2 and ViT-G CLIP, beta 10),
# then print the table of every result in $OUT. Missing feature caches are computed on the spot;
# examples/save_features.sh makes them ahead of time. Started again, the script skips each run whose
# results JSON of the same configuration exists (run.py --skip_done) and resumes a killed one from
# its checkpoint; a changed setting runs afresh under its own name (run.py's default: the main
# settings and a hash of all of them).
#
#   sh examples/run.sh
#   METHOD=kd PREC=1 SEEDS="0 1 2" sh examples/run.sh
#   SEEDS="0 1 2 3" GPUS="0 1" sh examples/run.sh   # the seeds spread over GPUs 0 and 1, one run each at a time
#
# GPUS (device names: CUDA numbers or UUIDs, or "cpu", also repeated) deals the seeds round-robin into
# one queue per device and runs the queues at once (examples/grid.sh, on_devices); without it the
# seeds run one after another.
set -e

METHOD=${METHOD:-aft}          # init (standard transfer learning), kd, aft, ...
PREC=${PREC:-10}               # beta
DATASET=${DATASET:-cifar10}
PRETRAINED=${PRETRAINED:-vit_giant_patch14_dinov2.lvd142m,vit_giant_patch14_clip_224.laion2b}
MODEL=${MODEL:-vit_small_patch16_224.augreg_in1k}
INIT_MODEL=${INIT_MODEL-$MODEL}            # empty: train the downstream model from random weights
LR=${LR:-1e-4}
SEEDS=${SEEDS:-0}
STEPS=${STEPS:-5000}
EVAL_STEPS=${EVAL_STEPS:-500}
BATCH_SIZE=${BATCH_SIZE:-128}
TRAIN_FRAC=${TRAIN_FRAC:-1}
USE_VAL=${USE_VAL:-False}      # True: evaluate on the 10% hold-out of train (for tuning beta)
USE_WANDB=${USE_WANDB:-False}
OUT=${OUT:-results}
CKPT_DIR=${CKPT_DIR:-checkpoints}
EXTRA=${EXTRA:-}               # more run.py flags

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # for python -m aft.results from any folder
. "$ROOT/examples/grid.sh"

# train_seed SEED: one run.py run
train_seed() {
    # shellcheck disable=SC2086  # EXTRA is a list of flags; DEVICE_FLAG (from GPUS) comes last, so it wins
    "$PYTHON" "$ROOT/run.py" \
        --seed="$1" \
        --model_class="$MODEL" \
        --init_model="$INIT_MODEL" \
        --dataset="$DATASET" \
        --pretrained_models="$PRETRAINED" \
        --train_frac="$TRAIN_FRAC" \
        --use_val="$USE_VAL" \
        --method="$METHOD" \
        --prec="$PREC" \
        --learn_scales=True \
        --steps="$STEPS" \
        --eval_steps="$EVAL_STEPS" \
        --optimizer=adam \
        --batch_size="$BATCH_SIZE" \
        --lr="$LR" \
        --wd=0 \
        --no_augment=True \
        --use_wandb="$USE_WANDB" \
        --out_dir="$OUT" \
        --ckpt_dir="$CKPT_DIR" \
        --resume=True \
        --skip_done=True \
        $EXTRA $DEVICE_FLAG
}

# shellcheck disable=SC2086  # SEEDS is a list
on_devices train_seed "$(printf '%s\n' $SEEDS)"

"$PYTHON" -m aft.results "$OUT"
