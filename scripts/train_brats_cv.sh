#!/usr/bin/env bash
# Train the cross-validated BraTS models on the real cases: one run per fold of configs/splits/brats_real_folds.json
# with the bundle's own configs/train.json (the shipped recipe), all folds at once, one CPU thread each, in the
# background. MODEL=segresnet trains the side-by-side baseline (configs/bundles/brats_segresnet.json) instead.
# Resumable: RESUME=True continues every fold from its last checkpoint (the poly schedule's clock included). The cases
# are loaded and resampled once for all folds and runs into CACHE_DIR (default runs/brats_cv/cache).
# Warm start: INIT=an ensemble file (e.g. the shipped models/model.pt) starts fold k from its member k (a fresh
# optimizer and schedule: a warm restart), e.g. to continue the shipped members.
# Usage: [MODEL=iunet] [FOLDS="0 1 2 3 4"] [RESUME=False] [INIT=...] [CACHE_DIR=...] scripts/train_brats_cv.sh [DATA_DIR] [RUN_DIR] [-- --key value ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${MODEL:-iunet}
positional=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do positional+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
data=$(cd "${positional[0]:-${MONAI_IUNET_DATA:-$root/../shared/data}}" && pwd)
runs=$(mkdir -p "${positional[1]:-$root/runs/brats_cv/$model}" && cd "${positional[1]:-$root/runs/brats_cv/$model}" && pwd)
py=${PYTHON:-$root/.venv/bin/python}
configs="'configs/train.json'"
[ "$model" = segresnet ] && configs="$configs,'$root/configs/bundles/brats_segresnet.json'"
for fold in ${FOLDS:-0 1 2 3 4}; do
    dir="$runs/fold$fold"
    mkdir -p "$dir"
    "$py" -m monai_iunet.apps.brats.data.datalist --dataset-dir "$data" --split "$root/configs/splits/brats_real_folds.json" \
        --fold "$fold" --output "$dir/datalist.json"
    # what a model card names: the command, the commit (and whether the tree was clean), when it started
    init=()
    [ -n "${INIT:-}" ] && init=(--init_weights "$(cd "$(dirname "$INIT")" && pwd)/$(basename "$INIT")" --init_member "$fold")
    "$py" -c 'import json, sys, time; json.dump({"command": sys.argv[1], "commit": sys.argv[2], "dirty": sys.argv[3] != "", "started": time.time()}, open(sys.argv[4], "w"), indent=1)' \
        "MODEL=$model FOLDS=$fold RESUME=${RESUME:-False} INIT=${INIT:-} scripts/train_brats_cv.sh $* (configs [$configs])" "$(git -C "$root" rev-parse HEAD)" \
        "$(git -C "$root" status --porcelain --untracked-files=no)" "$dir/provenance$([ "${RESUME:-False}" = True ] && echo _resumed).json"
    # glibc keeps freed tensors for the next step instead of unmapping and faulting them back in (3-9% faster steps,
    # docs/benchmarks/training_cpu.md)
    (cd "$root/bundles/brats_iunet_segmentation" && OMP_NUM_THREADS=1 MALLOC_MMAP_THRESHOLD_=33554432 \
        MALLOC_TRIM_THRESHOLD_=4294967296 nohup "$py" -m monai.bundle run \
        --config_file "[$configs]" --dataset_dir "$data" --data_list_file_path "$dir/datalist.json" \
        --ckpt_dir "$dir/models" --output_dir "$dir/eval" --resume "${RESUME:-False}" \
        --cache_dir "${CACHE_DIR:-$root/runs/brats_cv/cache}" "${init[@]}" "$@" \
        >> "$dir/train.log" 2>&1 &)
done
echo "training in the background; logs: $runs/fold*/train.log"
