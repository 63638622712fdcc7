#!/usr/bin/env bash
# Train the shipped BraTS model and its SegResNet baseline side by side on the real cases, one CPU thread each,
# the same budget of training time (configs/bundles/brats_real_cpu.json). Resumable: RESUME=True continues both.
# Usage: scripts/train_brats_real.sh [DATA_DIR=../shared/data] [RUN_DIR=runs/brats_real]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=$(cd "${1:-$root/../shared/data}" && pwd)
runs=$(mkdir -p "${2:-$root/runs/brats_real}" && cd "${2:-$root/runs/brats_real}" && pwd)
py=${PYTHON:-$root/.venv/bin/python}
"$py" -m monai_iunet.apps.brats.data.datalist --dataset-dir "$data" --split "$root/configs/splits/brats_real_holdout.json" \
    --output "$runs/datalist.json"
for model in iunet segresnet; do
    configs="'configs/train.json','$root/configs/bundles/brats_real_cpu.json'"
    [ "$model" = segresnet ] && configs="$configs,'$root/configs/bundles/brats_segresnet.json'"
    mkdir -p "$runs/$model"
    # what a model card names: the command, the commit (and whether the tree was clean), when it started
    "$py" -c 'import json, sys, time; json.dump({"command": sys.argv[1], "commit": sys.argv[2], "dirty": sys.argv[3] != "", "started": time.time()}, open(sys.argv[4], "w"), indent=1)' \
        "scripts/train_brats_real.sh (RESUME=${RESUME:-False}), configs [$configs]" "$(git -C "$root" rev-parse HEAD)" \
        "$(git -C "$root" status --porcelain --untracked-files=no)" "$runs/$model/provenance${RESUME:+_resumed}.json"
    (cd "$root/bundles/brats_iunet_segmentation" && OMP_NUM_THREADS=1 nohup "$py" -m monai.bundle run \
        --config_file "[$configs]" --dataset_dir "$data" --data_list_file_path "$runs/datalist.json" \
        --ckpt_dir "$runs/$model/models" --output_dir "$runs/$model/eval" --resume "${RESUME:-False}" \
        >> "$runs/$model/train.log" 2>&1 &)
done
echo "training in the background; logs: $runs/{iunet,segresnet}/train.log"
