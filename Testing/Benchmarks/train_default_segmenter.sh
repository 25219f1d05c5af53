#!/usr/bin/env bash
# Trains the shipped default segmenter brats-flair-t1ce-clipunet3d (FLAIR + T1ce, CLIP-guided
# 3D U-Net with the small-random CLIP) on the shared BraTS 2015 cases: brats_2013_pat0001..0004
# train, pat0005 and pat0006 held apart (--val-cases 2: the last two by id), 2 mm, patch 48^3.
# Then copies the model folder into the package zoo. Usage (from the repository root):
#   nice -n 5 Testing/Benchmarks/train_default_segmenter.sh [EPOCHS] [SAMPLES_PER_EPOCH]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DATA="${BRAINSPINEAI_TEST_DATA:-$ROOT/../shared/data}/volumes/brats2015-flair-t1c"
EPOCHS="${1:-20}"
SAMPLES="${2:-32}"
OUT="${SEG_OUT:-/tmp/brainspineai-default-seg}/brats-flair-t1ce-clipunet3d"
ZOO="$ROOT/BrainSpineAI/brainspineai/zoo/brats-flair-t1ce-clipunet3d"
RESUME=""
[ -f "$OUT.work/last.pt" ] && RESUME="--resume"
PYTHONPATH="$ROOT/BrainSpineAI${PYTHONPATH:+:$PYTHONPATH}" python3 -m brainspineai train segmenter \
  --data "$DATA" --out "$OUT" --sequences flair t1ce --epochs "$EPOCHS" --samples-per-epoch "$SAMPLES" \
  --patch-size 48 --spacing 2.0 --batch-size 2 --lr 3e-3 --seed 0 --device auto --val-cases 2 \
  --clip-model small-random --model-id brats-flair-t1ce-clipunet3d $RESUME \
  --description "CLIP-guided 3D U-Net (attention residual blocks, deep supervision, small-random CLIP), FLAIR + T1ce, trained on 4 BraTS 2015 cases; research use only" \
  --events "$OUT.events.jsonl"
mkdir -p "$ZOO"
cp "$OUT/model.json" "$OUT/model.safetensors" "$ZOO/"
echo "copied to $ZOO"
