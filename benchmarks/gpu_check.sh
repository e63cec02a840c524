#!/usr/bin/env bash
# One prepared CUDA check for a lent GPU machine (see docs/benchmarks.md): extraction throughput
# end to end vs compute-only, every head under CV on CUDA, and per-fold fine-tuning of both backbones.
# Expects ALL-IDB2 in .devdata/ALL_IDB2 (carried, never committed) and torch/torchvision on the machine.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
D=.devdata/ALL_IDB2
W=/tmp/gpu-work && rm -rf $W && mkdir -p $W
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torchvision, h5py; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
python3 -m pip list 2>/dev/null | grep -i -E "^(xgboost|scikit-learn|click|tqdm|h5py|matplotlib) "

PARTS=${PARTS:-123}  # which of the three parts below to run
if [[ $PARTS == *1* ]]; then
# 1. extraction: 20 copies of ALL-IDB2 (5,200 images) listed in a manifest CSV, 224 px, both backbones
python3 - <<'PY'
import csv, shutil, pathlib
src = pathlib.Path(".devdata/ALL_IDB2/img"); dst = pathlib.Path("/tmp/gpu-work/big")
rows = []
for c in range(20):
    d = dst / f"c{c:02d}"; shutil.copytree(src, d)
    rows += [(f"c{c:02d}/{p.name}", "all" if p.stem.endswith("_1") else "hem") for p in sorted(d.iterdir())]
with open(dst / "manifest.csv", "w", newline="") as fh:
    w = csv.writer(fh); w.writerow(["path", "label"]); w.writerows(rows)
print("images", len(rows))
PY
for bs in 64 128; do
  TIMEFORMAT="extract batch $bs wall %R s"
  time python3 -m fusionfeat extract $W/big/manifest.csv -o $W/big$bs.h5 \
    --weights random --device cuda --batch-size $bs --workers 12 --quiet 2>&1 | tail -3
done
python3 - <<'PY'
import time, torch
from fusionfeat.encoders import load_backbone
ms = [load_backbone(n, "random").trunk.cuda().to(memory_format=torch.channels_last) for n in ("resnet18", "vgg16")]
x = torch.randn(128, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
    for _ in range(3): [m(x) for m in ms]
    torch.cuda.synchronize(); t = time.perf_counter(); n = 20
    for _ in range(n): [m(x).float().mean((2, 3)) for m in ms]
    torch.cuda.synchronize()
print(f"compute-only both backbones bf16 batch 128: {n * 128 / (time.perf_counter() - t):.0f} img/s")
PY
python3 -m fusionfeat info $W/big128.h5 | head -12
fi

if [[ $PARTS == *2* || $PARTS == *3* ]]; then
# 2. every head but xgboost (not installed there) under 5-fold CV on CUDA, on a 224 px store of ALL-IDB2
python3 -m fusionfeat extract $D -o $W/a.h5 --weights random --device cuda --quiet
TIMEFORMAT="fit all wall %R s"
time python3 -m fusionfeat fit $W/a.h5 --head resnet18,vgg16,concat,attention,svm,logreg --cv stratified -o $OUT/run --device cuda --quiet 2>&1 | tail -12

fi
if [[ $PARTS == *3* ]]; then
# 3. per-fold fine-tuning of both backbones, 3 epochs at 224 px, then fit on the fine-tuned features
TIMEFORMAT="finetune wall %R s"
time python3 -m fusionfeat finetune $D --store $W/a.h5 --backbones resnet18,vgg16 \
  --weights random --epochs 3 --cv stratified --folds 5 --device cuda --workers 12 2>&1 | tr '\r' '\n' | grep -E "img/s|fold|wall|rror" | tail -40
python3 -m fusionfeat fit $W/a.h5 --features finetuned --head concat,logreg -o $OUT/run-ft --device cuda --quiet 2>&1 | tail -5
fi
