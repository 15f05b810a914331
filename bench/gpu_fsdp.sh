#!/usr/bin/env bash
# FSDP2 on a lent GPU, as one script (prepared; not yet run on a GPU): the Qwen2.5-0.5B R1-Zero recipe (a random
# Qwen2.5-0.5B-shaped model, 3 GRPO steps) under torchrun with one process, bf16-mixed precision (fp32 master weights
# and AdamW state, bf16 compute), once with parallel: ddp (the whole model on the rank) and once with parallel: fsdp2
# (fully_shard per decoder layer, bf16 parameters for compute, fp32 gradient reduction): seconds per step and peak
# memory side by side.
#   bash bench/gpu_fsdp.sh OUT_DIR
set -u
out=${1:-runs/gpu_fsdp}
mkdir -p "$out"
for parallel in ddp fsdp2; do
  echo "== parallel: $parallel"
  RUN_NAME=fsdp_$parallel LAUNCH="torchrun --standalone --nproc-per-node 1" \
    bash bench/gpu_recipe_check.sh "$out/$parallel" parallel=$parallel precision=bf16-mixed dtype=float32
done
