#!/usr/bin/env bash
# Per-fold fine-tuning on a GPU: training and embedding images/s of both backbones, then plain extraction, on
# ALL-IDB2 copied COPIES times (default 20: 5,200 images, so an epoch is long enough to time). Installs nothing;
# reads ALL-IDB2 from $DATA (default .devdata/ALL_IDB2, carried into the repo, never committed).
#
#   bash benchmarks/gpu_finetune_check.sh                      # on the GPU machine: 224 px, 3 epochs, 5 folds
#   TINY=1 DATA=../shared/data/ALL_IDB2 bash benchmarks/gpu_finetune_check.sh   # CPU smoke test of the script
#
# Copies of one image land in training and test folds alike: these are speed numbers, not accuracy numbers.
set -euo pipefail
DATA=${DATA:-.devdata/ALL_IDB2}
OUT=${OUT:-/tmp/gpu-finetune-check}
W=${WORK:-/tmp/gpu-finetune-work}
if [[ -n "${TINY:-}" ]]; then
  COPIES=${COPIES:-1} N=${N:-24} SIZE=${SIZE:-32} EPOCHS=${EPOCHS:-1} FOLDS=${FOLDS:-2} DEVICE=${DEVICE:-cpu}
  WORKERS=${WORKERS:-0} BATCH=${BATCH:-8} BACKBONES=${BACKBONES:-resnet18}
else
  COPIES=${COPIES:-20} N=${N:-0} SIZE=${SIZE:-224} EPOCHS=${EPOCHS:-3} FOLDS=${FOLDS:-5} DEVICE=${DEVICE:-cuda}
  WORKERS=${WORKERS:-12} BATCH=${BATCH:-64} BACKBONES=${BACKBONES:-resnet18,vgg16}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" && rm -rf "$W" && mkdir -p "$W"

if [[ "$DEVICE" == cuda* ]]; then nvidia-smi --query-gpu=name --format=csv; fi
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

python3 benchmarks/gpu_finetune_data.py "$DATA" "$W/data" --copies "$COPIES" --n "$N"
M=$W/data/manifest.csv
run() {  # run and time one command; keep its summary lines (progress bars go to the log only)
  local name=$1; shift
  local t0=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1 || { tail -20 "$OUT/$name.log"; exit 1; }
  tr '\r' '\n' <"$OUT/$name.log" | grep -E "img/s\)|: (trained|resumed|already)|fold plan|fine-tuned features of" || true
  echo "$name wall $((SECONDS - t0)) s"
}

# 1. frozen extraction (the store fine-tuning reads its samples and preprocessing from)
run extract python3 -m fusionfeat extract "$M" -o "$W/s.h5" --backbones "$BACKBONES" --weights random \
  --input-size "$SIZE" --device "$DEVICE" --batch-size "$BATCH" --workers "$WORKERS" --quiet
# 2. per-fold fine-tuning: the summary prints training and embedding img/s per fold and backbone
run finetune python3 -m fusionfeat finetune "$M" --store "$W/s.h5" --backbones "$BACKBONES" --weights random \
  --cv stratified --folds "$FOLDS" --epochs "$EPOCHS" --batch-size "$BATCH" --device "$DEVICE" \
  --workers "$WORKERS" --patience 0
# 3. extraction again, from the first fold's fine-tuned checkpoint (what `extract --weights FILE` costs)
B0=${BACKBONES%%,*}
run extract_ckpt python3 -m fusionfeat extract "$M" -o "$W/ft.h5" --backbones "$B0" \
  --weights "$W/s.h5.finetune/fold_0/$B0/best.pt" --input-size "$SIZE" --device "$DEVICE" \
  --batch-size "$BATCH" --workers "$WORKERS" --quiet
python3 -m fusionfeat info "$W/s.h5" | grep -E "samples|finetuned|backbone"
cp "$W"/s.h5.finetune/fold_0/*/history.json "$OUT/" 2>/dev/null || true
