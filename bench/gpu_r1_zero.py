"""GRPO steps on a GPU with a real-architecture model built on the spot (no download): seconds per step, peak memory.

    python bench/gpu_r1_zero.py --shape qwen2.5-0.5b --steps 4 --prompts 16 --group 8 --max-new-tokens 256

Builds a randomly initialised model of the given shape (Qwen2.5-0.5B: 24 layers, width 896, 14 heads, 2 KV heads,
152k vocabulary) with a byte-level BPE tokenizer trained on the spot, saves it, and runs `r1lab run` with a GRPO
stage on it in bf16. A random model never writes EOS, so every completion runs to max_new_tokens: the worst case for
generation time. Prints one JSON line with the measurements.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6),
}


def build(shape: str, out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    text = ["A conversation between User and Assistant. <think> 7+9=16 4+8+1=13 </think> <answer> 936 </answer>"]
    raw.train_from_iterator(text * 50, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    config = Qwen2Config(**SHAPES[shape], eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         max_position_embeddings=4096)
    model = Qwen2ForCausalLM(config)
    path = out / shape
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--out", default="runs/gpu_bench")
    parser.add_argument("--kl-coef", type=float, default=0.001)
    parser.add_argument("--micro-batch", type=int, default=16, help="sequences per forward/backward")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = build(args.shape, out)
    recipe = out / "recipe.yaml"
    recipe.write_text(json.dumps({
        "name": f"{args.shape}_grpo", "output_dir": str(out), "model": str(model_path), "dtype": "bfloat16",
        "gradient_checkpointing": args.gradient_checkpointing,
        "task": {"name": "arithmetic", "options": {"digits": 3}},
        "eval": {"num_problems": 16, "k": 2, "max_new_tokens": 32},
        "stages": {"grpo": {"kind": "grpo", "steps": args.steps, "prompts_per_step": args.prompts,
                            "group_size": args.group, "max_new_tokens": args.max_new_tokens, "lr": 3e-6,
                            "kl_coef": args.kl_coef, "micro_batch_size": args.micro_batch, "eval_every": 0, "save_every": 0, "eval": False}},
    }))
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "r1lab", "run", str(recipe), "--quiet"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        return result.returncode
    metrics = [json.loads(l) for l in (out / f"{args.shape}_grpo" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "step_seconds" in m]
    later = steps[1:] or steps  # the first step pays for CUDA warm-up
    report = {
        "shape": args.shape, "prompts": args.prompts, "group": args.group, "max_new_tokens": args.max_new_tokens,
        "micro_batch": args.micro_batch, "gradient_checkpointing": args.gradient_checkpointing, "steps": len(steps), "seconds_per_step": round(sum(m["step_seconds"] for m in later) / len(later), 2),
        "rollout_seconds_per_step": round(sum(m.get("rollout_seconds", 0) for m in later) / len(later), 2),
        "peak_gpu_memory_gib": max((m.get("gpu/peak_memory_gib", 0) for m in steps), default=None),
        "completion_tokens_per_step": args.prompts * args.group * args.max_new_tokens,
        "wall_seconds": round(time.time() - start, 1),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
