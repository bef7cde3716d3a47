#!/usr/bin/env bash
# The base world models scored by the Crafter verifier and both IDMs, on the held-out episodes of the shipped
# recording and on Crafter seeds 1000-1019 that no checkpoint saw; writes docs/base_models/{ar,dit}_{heldout,seed1000}/
# (report.md/json with the per-frame verifier table, video grid). With BEFORE_AR / BEFORE_DIT, each report compares
# that earlier checkpoint (before) with the shipped one (after).
# Usage: bash scripts/eval_bases.sh [BEFORE_AR BEFORE_DIT]
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f runs/crafter/data/manifest.json ] || rlir data record --env crafter --episodes 60 --steps 500 --seed 0 --out runs/crafter/data
[ -f runs/seed1000/manifest.json ] || rlir data record --env crafter --episodes 20 --steps 500 --seed 1000 --out runs/seed1000
declare -A BEFORE=([ar]=${1:-} [dit]=${2:-})
for kind in ar dit; do
  model=checkpoints/crafter/${kind}_world_model
  baseline=()
  [ -n "${BEFORE[$kind]}" ] && baseline=(--baseline "${BEFORE[$kind]}")
  rlir eval --data runs/crafter/data --world-model "$model" "${baseline[@]}" --out docs/base_models/${kind}_heldout
  rlir eval --data runs/seed1000 --all-episodes --world-model "$model" "${baseline[@]}" --out docs/base_models/${kind}_seed1000
done
