#!/usr/bin/env bash
# Rebuilds the shipped Crafter checkpoints from nothing with fixed seeds: records the data from the real
# Crafter game at 72x72 (one 8x8 tokenizer code a tile), then pretrains the tokenizer, the reward IDM, the
# evaluation IDM, the AR world model and the diffusion (DiT) world model. Two jobs run side by side, one
# thread each (on 2 shared cores, 2 threads a job ran up to 7x slower). About 70 minutes on 2 CPU cores.
# Usage: bash checkpoints/crafter/make.sh [OUT] (default checkpoints/crafter)
set -euo pipefail
OUT=${1:-checkpoints/crafter}
WORK=${WORK:-runs/crafter}
export OMP_NUM_THREADS=1

rlir data record --env crafter --episodes 60 --steps 500 --seed 0 --size 72 --out "$WORK/data"

rlir pretrain tokenizer --data "$WORK/data" --out "$WORK/tokenizer" --steps 3000 --batch 32 --lr 3e-3 \
  --codebook-size 512 --seed 0 --dtype bf16 --threads 1 --overwrite --quiet & first=$!
(rlir pretrain idm --data "$WORK/data" --out "$WORK/idm" --dtype bf16 --quiet \
  && rlir pretrain idm --eval --data "$WORK/data" --out "$WORK/eval_idm" --dtype bf16 --quiet) & second=$!
wait "$first"; wait "$second"   # each wait fails the script (set -e) if its job failed

rlir pretrain world-model --kind ar --data "$WORK/data" --tokenizer "$WORK/tokenizer" --out "$WORK/ar_world_model" \
  --steps 1500 --eval-every 250 --frame-action-embedding --previous-frame-input \
  --seed 0 --dtype bf16 --threads 1 --overwrite --quiet & first=$!
rlir pretrain world-model --kind diffusion --data "$WORK/data" --tokenizer "$WORK/tokenizer" \
  --out "$WORK/dit_world_model" --steps 2000 --eval-every 500 --patch-size 1 --previous-frame-neighbourhood \
  --seed 0 --dtype bf16 --threads 1 --overwrite --quiet & second=$!
wait "$first"; wait "$second"

for model in tokenizer idm eval_idm ar_world_model dit_world_model; do
  mkdir -p "$OUT/$model"
  cp "$WORK/$model"/{config.json,diffusion_pytorch_model.safetensors,metrics.json} "$OUT/$model/"
done
du -sh "$OUT"
