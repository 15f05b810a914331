#!/usr/bin/env bash
# The real-model recipe on a lent GPU: recipes/qwen2.5-0.5b/r1_zero.yaml, unchanged but for the model (a random
# Qwen2.5-0.5B-shaped model built on the spot: no download) and a short run. Prints seconds per step and peak memory.
#   bash bench/gpu_recipe_check.sh OUT_DIR [extra overrides...]
# RUN_NAME: the run's name (default recipe_check); LAUNCH: what starts r1lab (default python3; e.g. "torchrun
# --standalone --nproc-per-node 1").
set -u
out=${1:-runs/gpu_recipe_check}; shift || true
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"  # r1lab on PYTHONPATH; math-verify and datasets from .whl/ if missing
python3 -c "from pathlib import Path; import sys; sys.path.insert(0, 'bench'); from gpu_r1_zero import build; print(build('qwen2.5-0.5b', Path('/tmp/gpu_models')))"
name=${RUN_NAME:-recipe_check}
if ! python3 -c "import math_verify" 2>/dev/null; then  # the same step on other prompts
  echo "recipe check: no math-verify in this Python (bench/gpu_wheels.sh): the arithmetic task instead of the math set"
  set -- "$@" "task={name: arithmetic}"
fi
timeout 240 ${LAUNCH:-python3} -m r1lab run recipes/qwen2.5-0.5b/r1_zero.yaml model=/tmp/gpu_models/qwen2.5-0.5b \
  output_dir=/tmp/gpu_runs name=$name stages.grpo.steps=3 stages.grpo.eval_every=0 stages.grpo.save_every=0 \
  stages.grpo.eval=false "$@" 2>&1 | grep -v -i -E "warn|shards" | tail -20
cp /tmp/gpu_runs/$name/metrics.jsonl "$out/recipe_check_metrics.jsonl" 2>/dev/null
python3 - "$out/recipe_check_metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [r for r in rows if "step_seconds" in r]
for r in steps:
    print({k: r.get(k) for k in ("step", "step_seconds", "rollout_seconds", "gpu/peak_memory_gib",
                                 "completion/length_mean", "reward/accuracy_errors")})
PY
