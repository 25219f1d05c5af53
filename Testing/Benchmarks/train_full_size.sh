#!/usr/bin/env bash
# Full-size AFF-CL ablation and SSCLNet label-efficiency runs for a GPU machine (not CI).
# Same split and seed as the shipped default model, so every result can be compared with it
# through paired_comparison.py. Usage: Testing/Benchmarks/train_full_size.sh OUT_DIR [DATA_DIR]
# Several GPUs: prefix the brainspineai commands with `torchrun --nproc_per_node N -m`.
set -euo pipefail
out=${1:?output folder}
data=${2:-../shared/data/brain-mri-2d/kaggle4-train}
mkdir -p "$out"
brainspineai ablation affcl --data "$data" --out "$out/ablation" --image-size 128 --epochs 40 --batch-size 64 \
  --lr 3e-3 --device cuda --model-id affcl-128 --events "$out/ablation.events.jsonl"
brainspineai train simclr --data "$data" --out "$out/simclr" --backbone resnet18-w32 --image-size 128 --epochs 200 \
  --batch-size 256 --lr 3e-3 --device cuda --model-id ssclnet-simclr-128 --events "$out/simclr.events.jsonl" --resume
brainspineai ablation label-efficiency --data "$data" --out "$out/label-efficiency" --encoder "$out/simclr" \
  --epochs 40 --device cuda --model-id ssclnet-128 --events "$out/labeleff.events.jsonl"
for m in "$out/ablation/aff-cl-both" "$out/label-efficiency/simclr-100pct"; do
  python Testing/Benchmarks/paired_comparison.py brain-tumor-4class-resnet18w32 "$m" "$data" --device cuda
done
