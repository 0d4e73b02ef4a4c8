#!/bin/sh
# Choose beta (--prec) on the validation split, then measure the test accuracy at the chosen beta:
#   1. every method x beta x seed with --use_val=True (init once per seed: its beta changes nothing);
#   2. every method x seed with --use_val=False at the beta with the best mean validation accuracy;
#   3. the summary table and a plot of validation accuracy against beta ($OUT/beta.png).
#
#   sh examples/sweep_beta.sh                                  # the settings below
#   SEEDS="0 1" BETAS="1 10" STEPS=500 sh examples/sweep_beta.sh   # any setting from the environment
#
# A run whose results JSON of the same configuration exists is skipped (run.py --skip_done decides,
# from every setting, EXTRA included), and a killed run resumes from its checkpoint, so the script
# can simply be started again after an interruption; a changed setting runs afresh. Run it from the
# folder that holds features/ (the feature caches; missing ones are computed on the spot).
set -e

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
SWEEP=$(echo "${DATASET}_$MODEL" | tr / -)
OUT=${OUT:-results/sweep_$SWEEP}           # results JSONs, beta.png, chosen.txt; one folder per dataset and model,
CKPT_DIR=${CKPT_DIR:-checkpoints/sweep_$SWEEP}  # so the table and the chosen betas are this sweep's
USE_WANDB=${USE_WANDB:-False}
WANDB_GROUP=${WANDB_GROUP:-sweep_$SWEEP}   # one wandb group per sweep

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # for python -m aft.results from any folder

# train METHOD BETA SEED USE_VAL: one run.py run under its default name (the main settings and a
# hash of all of them); run.py skips it when a results JSON of exactly this configuration exists
train() {
    # shellcheck disable=SC2086  # EXTRA is a list of flags
    python "$ROOT/run.py" --seed="$3" --model_class="$MODEL" --init_model="$INIT_MODEL" --dataset="$DATASET" \
        --pretrained_models="$PRETRAINED" --use_val="$4" --method="$1" --prec="$2" --steps="$STEPS" \
        --eval_steps="$EVAL_STEPS" --batch_size="$BATCH_SIZE" --lr="$LR" --no_augment=True \
        --use_wandb="$USE_WANDB" --wandb_group="$WANDB_GROUP" --out_dir="$OUT" \
        --ckpt_dir="$CKPT_DIR" --resume=True --skip_done=True $EXTRA
    # Finished runs' checkpoints go: their results JSONs are what counts now. A checkpoint and a
    # results JSON of one (hashed) name are of the same configuration.
    for ckpt in "$CKPT_DIR"/*.pt; do
        if [ -f "$OUT/$(basename "$ckpt" .pt).json" ]; then
            rm -f "$ckpt"
        fi
    done
}

echo "== 1. validation runs: methods $METHODS, betas $BETAS, seeds $SEEDS"
for seed in $SEEDS; do
    for method in $METHODS; do
        if [ "$method" = init ]; then
            train init 0 "$seed" True
        else
            for beta in $BETAS; do
                train "$method" "$beta" "$seed" True
            done
        fi
    done
done

echo "== 2. test runs at the beta chosen on validation"
python -m aft.results "$OUT" --chosen > "$OUT/chosen.txt"
cat "$OUT/chosen.txt"
for method in $METHODS; do
    beta=$(awk -v m="$method" '$1 == m { print $2 }' "$OUT/chosen.txt")
    case "$beta" in
        "") echo "error: no validation result for $method in $OUT; see the errors above" >&2; exit 1 ;;
        *[!0-9.e+-]*) echo "error: $OUT holds runs of several settings; give this sweep its own OUT=..." >&2; exit 1 ;;
    esac
    for seed in $SEEDS; do
        train "$method" "$beta" "$seed" False
    done
done

echo "== 3. summary"
python -m aft.results "$OUT" --plot "$OUT/beta.png"
