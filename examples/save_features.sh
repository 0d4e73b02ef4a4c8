#!/bin/sh
# Step 1 of the paper's pipeline: cache the features of each pre-trained model on a dataset, in
# features/{model}_{dataset}.pt. A file that exists already, of every row, is kept. The downstream model's own
# features (ViT-S here) are only needed by B-Tuning (--method=btune, after logme.py).
#
#   sh examples/save_features.sh
#   DATASET=flowers MODELS="vit_large_patch14_dinov2.lvd142m" sh examples/save_features.sh
set -e

DATASET=${DATASET:-cifar10}
MODELS=${MODELS:-"vit_giant_patch14_dinov2.lvd142m vit_giant_patch14_clip_224.laion2b vit_small_patch16_224.augreg_in1k"}
FEATURES_DIR=${FEATURES_DIR:-./features}
BATCH_SIZE=${BATCH_SIZE:-256}
EXTRA=${EXTRA:-}               # more save_features.py flags, e.g. "--data_dir=/data --num_workers=8"
PROMPT=${PROMPT:-}             # your own text data: --prompt (it may hold spaces, EXTRA may not)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/examples/python.sh"  # PYTHON: the project's Python, without activating anything

for model in $MODELS; do
    # shellcheck disable=SC2086  # EXTRA is a list of flags
    "$PYTHON" "$ROOT/save_features.py" --model_class="$model" --dataset="$DATASET" --features_dir="$FEATURES_DIR" \
        --batch_size="$BATCH_SIZE" --keep_existing=True --prompt="$PROMPT" $EXTRA
done
