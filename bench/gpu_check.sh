#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (no internet there): r1lab from this checkout on PYTHONPATH.
#   bash bench/gpu_check.sh OUT_DIR
set -u
out=${1:-runs/gpu_check}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"  # r1lab on PYTHONPATH; math-verify and datasets from .whl/ if missing
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
for spec in "16 8 256 4 16" "32 8 512 3 16 --gradient-checkpointing"; do
  set -- $spec
  python3 bench/gpu_r1_zero.py --shape qwen2.5-0.5b --prompts $1 --group $2 --max-new-tokens $3 --steps $4 \
    --micro-batch $5 ${6:-} --out /tmp/gpu_bench_$1_$3 | tee -a "$out/gpu_r1_zero.jsonl"
  cp /tmp/gpu_bench_$1_$3/qwen2.5-0.5b_grpo/metrics.jsonl "$out/metrics_$1_$3.jsonl" 2>/dev/null
done
