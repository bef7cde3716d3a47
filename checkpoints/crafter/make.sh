#!/usr/bin/env bash
# Rebuilds the shipped Crafter checkpoints from nothing with fixed seeds: records the data from the real
# Crafter game, then pretrains the tokenizer, the reward IDM, the evaluation IDM, the AR world model and the
# diffusion (DiT) world model. About 65 minutes on 2 CPU cores.
# Usage: bash checkpoints/crafter/make.sh [OUT] (default checkpoints/crafter)
set -euo pipefail
OUT=${1:-checkpoints/crafter}
WORK=${WORK:-runs/crafter}
export OMP_NUM_THREADS=1   # one thread per job: on 2 shared cores, 2 threads ran up to 7x slower

rlir data record --env crafter --episodes 60 --steps 500 --seed 0 --out "$WORK/data"
rlir pretrain tokenizer --data "$WORK/data" --out "$WORK/tokenizer" --steps 3000 --batch 32 --lr 3e-3 \
  --codebook-size 512 --seed 0 --dtype bf16 --threads 1 --overwrite
rlir pretrain idm --data "$WORK/data" --out "$WORK/idm" --dtype bf16
rlir pretrain idm --eval --data "$WORK/data" --out "$WORK/eval_idm" --dtype bf16
rlir pretrain world-model --kind ar --data "$WORK/data" --tokenizer "$WORK/tokenizer" --out "$WORK/ar_world_model" \
  --steps 600 --seed 0 --dtype bf16 --threads 1 --overwrite
rlir pretrain world-model --kind diffusion --data "$WORK/data" --tokenizer "$WORK/tokenizer" \
  --out "$WORK/dit_world_model" --steps 3000 --seed 0 --dtype bf16 --threads 1 --overwrite

for model in tokenizer idm eval_idm ar_world_model dit_world_model; do
  mkdir -p "$OUT/$model"
  cp "$WORK/$model"/{config.json,diffusion_pytorch_model.safetensors,metrics.json} "$OUT/$model/"
done
du -sh "$OUT"
