#!/usr/bin/env bash
# The rollout engine on a lent GPU, as one script (prepared; not yet run on a GPU): r1lab's own engine against
# transformers' generate on a Qwen2.5-0.5B-shaped random model in bf16 (decode ms per step at 64 × 1,024, tokens/s
# with 256 sequences in flight, peak memory, weight refresh; the graphs with two-product and with fused sdpa decode
# attention, and without graphs), then the Qwen2.5-0.5B R1-Zero recipe's GRPO step at
# 64 x 128 in bf16-mixed with each engine, 4 steps (seconds per step, rollout seconds, peak memory). First,
# tests/test_gpu.py: the decode steps captured in CUDA graphs give the completions of the eager steps (fp32), see
# every optimizer step, agree in bf16, and with the fused decode attention. Last, the same GRPO step with every row of
# the training batch run whole (R1LAB_SHARE_PROMPTS=0) for the shared-prompt forward's worth on a GPU.
#   bash bench/gpu_engine.sh OUT_DIR
set -u
out=${1:-runs/gpu_engine}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"  # r1lab on PYTHONPATH; math-verify and datasets from .whl/ if missing
timeout 180 python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$out/test_gpu.txt"
timeout 300 python3 bench/gpu_engine.py --out "$out/gpu_engine.json"
# the GRPO step of the issue's target, 64 completions x 128 new tokens (4 prompts x G 16), bf16-mixed, 4 steps
for engine in auto transformers; do
  RUN_NAME=recipe_$engine bash bench/gpu_recipe_check.sh "$out/recipe_$engine" engine=$engine \
    stages.grpo.steps=4 stages.grpo.prompts_per_step=4 stages.grpo.group_size=16 stages.grpo.max_new_tokens=128 \
    stages.grpo.minibatches=1 stages.grpo.micro_batch_size=16 precision=bf16-mixed gradient_checkpointing=false
done
# the training half with every row whole instead of each prompt once (the engine as in recipe_auto)
R1LAB_SHARE_PROMPTS=0 RUN_NAME=recipe_whole_rows bash bench/gpu_recipe_check.sh "$out/recipe_whole_rows" engine=auto \
  stages.grpo.steps=4 stages.grpo.prompts_per_step=4 stages.grpo.group_size=16 stages.grpo.max_new_tokens=128 \
  stages.grpo.minibatches=1 stages.grpo.micro_batch_size=16 precision=bf16-mixed gradient_checkpointing=false
