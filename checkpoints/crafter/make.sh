#!/usr/bin/env bash
# Rebuilds the shipped Crafter checkpoints from nothing with fixed seeds: records the data from the real
# Crafter game at 72x72 (one 8x8 tokenizer code a tile), then pretrains the tokenizer, the reward IDM, the
# evaluation IDM, the AR world model and the diffusion (DiT) world model, each from its config in
# configs/pretrain/ (every setting is there; the configs read and write under runs/crafter). Two jobs run side
# by side, one thread each (on 2 shared cores, 2 threads a job ran up to 7x slower). About 2 hours on 2 CPU
# cores, most of it the world models' stages.
# Usage: bash checkpoints/crafter/make.sh [OUT] (default checkpoints/crafter)
set -euo pipefail
OUT=${1:-checkpoints/crafter}
WORK=runs/crafter  # where the configs put the recording and the models
export OMP_NUM_THREADS=1

rlir data record --env crafter --episodes 60 --steps 500 --seed 0 --size 72 --out "$WORK/data"

rlir pretrain tokenizer --config configs/pretrain/crafter_tokenizer.yaml & first=$!
(rlir pretrain idm --config configs/pretrain/crafter_idm.yaml \
  && rlir pretrain idm --config configs/pretrain/crafter_eval_idm.yaml) & second=$!
wait "$first"; wait "$second"   # each wait fails the script (set -e) if its job failed

# The world models in stages (the configs say why): the AR's second stage halves its changed-code weight and its
# third weighs only the changes of transitions in which the player moved; the DiT's second trains on 16-frame clips.
(rlir pretrain world-model --config configs/pretrain/crafter_ar_world_model.yaml \
  && rlir pretrain world-model --config configs/pretrain/crafter_ar_world_model_stage2.yaml \
  && rlir pretrain world-model --config configs/pretrain/crafter_ar_world_model_stage3.yaml) & first=$!
(rlir pretrain world-model --config configs/pretrain/crafter_dit_world_model.yaml \
  && rlir pretrain world-model --config configs/pretrain/crafter_dit_world_model_stage2.yaml) & second=$!
wait "$first"; wait "$second"

for model in tokenizer idm eval_idm ar_world_model dit_world_model; do
  mkdir -p "$OUT/$model"
  cp "$WORK/$model"/{config.json,diffusion_pytorch_model.safetensors,metrics.json} "$OUT/$model/"
done
du -sh "$OUT"
